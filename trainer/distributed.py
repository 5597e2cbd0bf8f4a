"""Data-parallel training on Ray: N actors, gradients averaged through the driver every step.

Each actor (``Worker``) replays the dataset through the range reader, holds a
full replica of the model and optimizer state, and takes its share of every
global micro-batch (``np.array_split`` of ``batch_indices``). A step is one
round trip: the driver calls ``step(avg, i)`` on every actor, which applies
the previous step's averaged gradient and returns the gradient of the
*summed* masked loss of its shard of batch ``i``, with its token count. The
driver adds the sums and divides by the global token count, which is the
gradient of the global batch's mean loss exactly (a mean of per-shard means
would not be, shards hold different numbers of response tokens), so N
actors follow the curve of one process up to float summation order.

Why an all-reduce through Ray and not ``jax.distributed``:

- a dead actor surfaces in the driver as ``RayActorError``; the driver kills
  the others, starts fresh ones and restores the last checkpoint. With
  ``jax.distributed`` a dead peer leaves the others blocked inside a
  collective, and it can be initialised only once per process, so recovery
  needs fresh processes and an out-of-band watchdog anyway;
- the driver holds no JAX state and starts nothing after JAX but Ray itself,
  and the actors are plain processes, so N=1 and a multi-node cluster are
  the same code;
- the cost, two copies of the gradient per actor per step through the
  object store, is measured in ``bench/training.py``; it is small next to
  compute at the presets here. At much larger models the seam to swap is
  ``_all_reduce`` (``ray.util.collective`` or a ``jax.distributed`` mesh).

Rank 0 writes the checkpoints (``trainer.checkpoint``) and evaluates; on a
cluster the workdir must be on storage every node sees.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.dataset import Manifest
from schemas.errors import TracestreamError
from trainer.config import ConfigError, Preset
from trainer.loop import CheckpointHook, MetricsHook, Result, checkpoint_due

log = logging.getLogger(__name__)

NAMESPACE = "tracestream"
CPUS_PER_WORKER = 0.0
"""Ray CPU reservation per actor: 0, so N actors fit on a small machine; XLA uses the cores it finds."""


class WorkerLost(TracestreamError):
    """Training actors kept dying; the run gave up after its restarts."""


class RayUnavailable(TracestreamError):
    """The Ray cluster named by RAY_ADDRESS cannot be joined."""


class TrainerShutDown(TracestreamError):
    """``shutdown`` was called while training: no actor is started again (the run is being cancelled)."""


class WorkerFailed(TracestreamError):
    """A training actor raised an error that is not a tracestream error (a bug); the cause is chained."""


def connect(settings: Settings) -> None:
    """Join ``settings.ray_address``, or start a local Ray instance in ``settings.ray_temp_dir`` (once per process).

    Call it from the main thread, before training starts.

    Raises:
        RayUnavailable: ``settings.ray_address`` is set and cannot be joined.
    """
    if ray.is_initialized():
        return
    with warnings.catch_warnings():
        # ray.init starts its daemons with subprocess (fork, then exec at once); JAX's at-fork warning
        # is about forks that keep running Python next to JAX's threads, which this is not.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        if settings.ray_address:
            try:
                ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(
                    f"cannot join the Ray cluster at {settings.ray_address} (RAY_ADDRESS): {exc}; "
                    "start it, fix the address, or unset RAY_ADDRESS to train on a local Ray"
                ) from exc
            return
        temp = Path(settings.ray_temp_dir).absolute()
        temp.mkdir(parents=True, exist_ok=True)
        # Ray runs workers at nice 15 by default; training actors are the work itself, and at nice 15
        # they ran ~4x slower than the same step in-process on a machine shared with other jobs.
        ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, _temp_dir=str(temp),
                 object_store_memory=256 * 1024 * 1024, log_to_driver=False, logging_level=logging.WARNING,
                 _system_config={"worker_niceness": 0})


def actor_name(run_id: str, rank: int, attempt: int) -> str:
    """Name of a run's actor in the ``tracestream`` namespace (``ray.get_actor(name, namespace=NAMESPACE)``)."""
    return f"{run_id}.attempt{attempt}.rank{rank}"


class Worker:
    """One data-parallel replica: its copy of the data, the model and the optimizer state.

    Runs as a Ray actor; JAX is imported in the actor's process only.
    """

    def __init__(self, rank: int, workers: int, preset: Preset, kafka: KafkaClients, manifest: Manifest,
                 workdir: str | None, compilation_cache: str | None = None) -> None:
        self.rank, self.workers, self.preset = rank, workers, preset
        self.kafka, self.manifest, self.workdir = kafka, manifest, workdir
        self.compilation_cache = compilation_cache
        self.ckpt = None

    def load(self) -> dict[str, Any]:
        """Replay the dataset, build the model; rank 0 restores the last checkpoint. Returns counts and position."""
        import jax
        from jax.flatten_util import ravel_pytree

        from schemas.codec import AvroCodec
        from schemas.registry import default_registry
        from trainer.checkpoint import sha256_dir
        from trainer.data import read_examples, tokenize_counted
        from trainer.lm import build_lm
        from trainer.loop import checkpointer, data_identity, restore
        from trainer.train import make_train_fns

        if self.compilation_cache:
            # Fresh actors (a restart after a death, the next run) reuse the compiled step instead of
            # spending seconds compiling it again.
            jax.config.update("jax_compilation_cache_dir", self.compilation_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        train_cfg = self.preset.train
        train, evals = asyncio.run(read_examples(self.kafka, self.manifest, AvroCodec(default_registry())))
        info: dict[str, Any] = {"train": len(train), "eval": len(evals), "resumed_from": None,
                                "checkpoint": None, "sha256": None, "platform": jax.default_backend()}
        if not train:
            return {**info, "next_batch": 0}
        self.n = len(train)
        self.lm = lm = build_lm(self.preset)
        self.arrays, self.truncated = tokenize_counted(train, lm.max_len, lm.tokenizer)
        info.update(truncated=self.truncated, max_len=lm.max_len, model=lm.info)
        self.evals = evals if self.rank == 0 else []
        self.train_answers = train if self.rank == 0 else []  # the scorecard's baseline: train's commonest answer
        self.fns = make_train_fns(lm.apply, train_cfg)
        self.state = self.fns.init(lm.params)
        _, unravel = ravel_pytree(lm.params)  # what trains: under LoRA, the adapters only
        fns = self.fns

        def grad_sums(params, batch, frozen):
            grads, m = fns.compute_grad_sums(params, batch, frozen)
            return ravel_pytree(grads)[0], m["loss_sum"], m["tokens"]

        def apply(state, flat):
            return fns.apply_grads(state, unravel(flat))[0]

        def apply_then_grad_sums(state, flat, batch, frozen):
            state = apply(state, flat)
            return state, grad_sums(state.params, batch, frozen)

        self._grad_sums = jax.jit(grad_sums)
        self._apply = jax.jit(apply)
        self._apply_then_grad_sums = jax.jit(apply_then_grad_sums)  # one dispatch per step when not saving
        self.data_id = data_identity(self.n, train_cfg)
        if self.rank == 0:
            self.ckpt = checkpointer(self.workdir)
            resumed, self.state = restore(self.ckpt, self.state, self.data_id)
            if resumed is not None:
                path = self.ckpt.path(resumed)
                info.update(resumed_from=resumed, checkpoint=str(path), sha256=sha256_dir(path))
        return {**info, "next_batch": int(self.state.step)}

    def get_state(self) -> Any:
        import jax

        return jax.device_get(self.state)

    def set_state(self, state: Any) -> int:
        import jax
        import jax.numpy as jnp

        self.state = jax.tree.map(jnp.asarray, state)
        return int(self.state.step)

    def step(self, avg: np.ndarray | None, micro: int, save: bool) -> tuple[np.ndarray, float, float, float, Any]:
        """Apply ``avg`` (the previous step's averaged gradient), maybe checkpoint, then compute batch ``micro``.

        Returns ``(flat gradient of the summed loss, loss sum, tokens, seconds spent, saved checkpoint)``.
        """
        from trainer.train import batch_indices, get_batch

        started = time.perf_counter()
        train_cfg = self.preset.train
        shard = np.array_split(batch_indices(self.n, train_cfg.batch_size, train_cfg.seed, micro),
                               self.workers)[self.rank]
        batch = get_batch(self.arrays, shard)
        if avg is not None and not save:
            saved = None
            self.state, (flat, loss_sum, tokens) = self._apply_then_grad_sums(self.state, avg, batch,
                                                                              self.lm.frozen)
        else:
            saved = self._apply_and_save(avg, save)
            flat, loss_sum, tokens = self._grad_sums(self.state.params, batch, self.lm.frozen)
        flat = np.asarray(flat)  # waits for the device
        return flat, float(loss_sum), float(tokens), time.perf_counter() - started, saved

    def finish(self, avg: np.ndarray | None, save: bool) -> Any:
        """Apply the last averaged gradient and write the final checkpoint (rank 0)."""
        return self._apply_and_save(avg, save)

    def _apply_and_save(self, avg: np.ndarray | None, save: bool) -> tuple[int, str, str] | None:
        if avg is not None:
            self.state = self._apply(self.state, avg)
        if not save or self.ckpt is None:
            return None
        from trainer.checkpoint import sha256_dir

        micro = int(self.state.step)
        update = micro // self.preset.train.grad_accum_steps
        path = self.ckpt.save(update, self.state, {**self.data_id, "next_batch": micro})
        return None if path is None else (update, str(path), sha256_dir(path))

    def evaluate(self) -> dict[str, Any]:
        from trainer.evaluate import evaluate
        from trainer.loop import truncation_card

        card = evaluate(self.lm.apply, self.state.params, self.evals, self.preset.model, self.preset.train,
                        self.train_answers, lm=self.lm)
        card["truncated"] = truncation_card(self.truncated, card["truncated"], self.lm.max_len)
        return card

    def export(self) -> list[dict[str, str]]:
        """Rank 0: a base model run's outputs under ``workdir / "export"`` (``trainer.loop.export_outputs``)."""
        from trainer.loop import export_outputs

        return export_outputs(self.lm, self.state.params, self.workdir)

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()


@dataclass(frozen=True)
class DataCounts:
    """What rank 0 read from the dataset."""

    train: int
    eval: int
    platform: str  # JAX backend the actors compute on ("cpu", "gpu", ...)
    truncated: int = 0  # train examples longer than max_len, cut by the truncation rule
    max_len: int = 0  # tokens per training sequence
    model: dict[str, Any] | None = None  # trainer.lm.LM.info: kind, family, path, parameter counts


def _unwrap(exc: RayTaskError) -> BaseException:
    """An actor's own exception: tracestream errors keep their class; anything else becomes WorkerFailed."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TracestreamError):
        return cause
    return WorkerFailed(f"a training actor failed: {cause!r}" if cause is not None else str(exc))


class RayTrainer:
    """Drives one run's actors: start them, step them, restart them from the last checkpoint when one dies.

    ``compilation_cache`` is a folder for JAX's persistent compilation cache,
    shared by the actors. ``start`` then ``train``; ``shutdown`` always (it kills the actors). Every
    method blocks, so async callers run them in a thread. The driver only adds
    numpy arrays; JAX runs in the actors.
    """

    def __init__(self, preset: Preset, kafka: KafkaClients, manifest: Manifest, workdir: Path | None, *,
                 workers: int, run_id: str, max_restarts: int = 3,
                 compilation_cache: Path | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        if workers > preset.train.batch_size:
            raise ConfigError(
                f"workers ({workers}) must not exceed TrainConfig.batch_size ({preset.train.batch_size}): "
                "each worker takes a share of every batch; raise batch_size or use fewer workers"
            )
        self.preset, self.kafka, self.manifest = preset, kafka, manifest
        self.workdir = None if workdir is None else str(Path(workdir).absolute())
        self.workers, self.run_id, self.max_restarts = workers, run_id, max_restarts
        self.compilation_cache = None if compilation_cache is None else str(Path(compilation_cache).absolute())
        self.restarts = 0
        self.attempt = 0
        self.actors: list[Any] = []
        self.position = 0  # next micro-batch of the current actors
        self.resumed_from: int | None = None  # checkpoint the run first continued from
        self.checkpoint: tuple[int, str, str] | None = None  # (update, path, sha256) of the last one
        self._lock = threading.Lock()
        self._closed = False

    # --- actors -----------------------------------------------------------------

    def start(self) -> DataCounts:
        """Start the actors; they replay the dataset and rank 0 restores the last checkpoint.

        Raises:
            ConfigError / RangeExpiredError / ...: what an actor raised while loading.
            WorkerFailed: an actor failed with a non-tracestream error.
        """
        counts = self._start_actors()
        if self.attempt == 1 and self.checkpoint is not None:
            self.resumed_from = self.checkpoint[0]
        return counts

    def _start_actors(self) -> DataCounts:
        self.attempt += 1
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0.0))
        options: dict[str, Any] = {"num_cpus": CPUS_PER_WORKER, "max_restarts": 0, "namespace": NAMESPACE}
        if gpus > 0:
            options["num_gpus"] = min(1.0, gpus / self.workers)
        remote = ray.remote(Worker)
        with self._lock:
            if self._closed:
                raise TrainerShutDown(f"run {self.run_id}: the trainer was shut down; not starting actors")
            self.actors = [
                remote.options(name=actor_name(self.run_id, rank, self.attempt), **options).remote(
                    rank, self.workers, self.preset, self.kafka, self.manifest, self.workdir,
                    self.compilation_cache)
                for rank in range(self.workers)
            ]
        infos = self._get([a.load.remote() for a in self.actors])
        first = infos[0]
        self.position = first["next_batch"]
        if first["checkpoint"] is not None:
            self.checkpoint = (first["resumed_from"], first["checkpoint"], first["sha256"])
            if self.workers > 1:  # the others start from the seed's init; give them rank 0's restored state
                state = ray.put(self._get(self.actors[0].get_state.remote()))
                self._get([a.set_state.remote(state) for a in self.actors[1:]])
        return DataCounts(train=first["train"], eval=first["eval"], platform=first["platform"],
                          truncated=first.get("truncated", 0), max_len=first.get("max_len", 0),
                          model=first.get("model"))

    def shutdown(self) -> None:
        """Kill this run's actors and start none again (idempotent; safe while ``train`` runs in another thread)."""
        with self._lock:
            self._closed = True
        self._kill_actors()

    def _kill_actors(self) -> None:
        with self._lock:
            actors, self.actors = self.actors, []
        for actor in actors:
            ray.kill(actor, no_restart=True)

    @staticmethod
    def _get(refs: Any) -> Any:
        try:
            return ray.get(refs)
        except RayTaskError as exc:
            raise _unwrap(exc) from None

    # --- training ------------------------------------------------------------------

    def train(self, *, on_metrics: MetricsHook | None = None, on_checkpoint: CheckpointHook | None = None,
              should_stop: Callable[[], None] | None = None) -> Result:
        """Train to ``total_steps`` updates and evaluate on rank 0, restarting dead actors from the checkpoint.

        ``on_metrics`` / ``on_checkpoint`` are ``train_and_evaluate``'s hooks; a
        micro-step or checkpoint already delivered is never delivered again,
        also when actors die and the steps after the checkpoint are recomputed.
        Metrics carry two more keys: ``step_s`` (the driver's wall time of the
        step) and ``compute_s`` (the slowest actor's time inside the step), so
        ``step_s - compute_s`` is the time spent exchanging gradients.
        ``should_stop()`` runs before every step and may raise (e.g. RunCancelled).

        Raises:
            WorkerLost: actors died more than ``max_restarts`` times.
        """
        delivered = self.position  # micro-steps up to here were delivered before (or by a previous driver)
        announced = -1
        history: list[dict[str, Any]] = []

        def deliver(metrics: dict[str, Any]) -> None:
            nonlocal delivered
            if metrics["micro_step"] > delivered:
                delivered = metrics["micro_step"]
                history.append(metrics)
                if on_metrics is not None:
                    on_metrics(metrics)

        def saved(checkpoint: tuple[int, str, str] | None) -> None:
            nonlocal announced
            if checkpoint is None:
                return
            self.checkpoint = checkpoint
            if checkpoint[0] > announced:
                announced = checkpoint[0]
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint[0], Path(checkpoint[1]), checkpoint[2])

        saved(self.checkpoint)  # the one resumed from: a driver killed before announcing it announces it now

        while True:
            try:
                if not self.actors:
                    self._start_actors()
                self._train_once(deliver, saved, should_stop)
                outputs = self._get(self.actors[0].export.remote())
                scorecard = self._get(self.actors[0].evaluate.remote())
                state = self._get(self.actors[0].get_state.remote())
                break
            except RayActorError as exc:
                self.restarts += 1
                self._kill_actors()
                if should_stop is not None:
                    should_stop()  # a cancelled run is not restarted
                if self.restarts > self.max_restarts:
                    raise WorkerLost(
                        f"run {self.run_id}: training actors died {self.restarts} times, giving up "
                        f"(last: {exc}); the last checkpoint is {self.checkpoint and self.checkpoint[1]}, "
                        "rerun with the same run id to resume from it"
                    ) from exc
                log.warning("run %s: an actor died (%s); restarting %d actors from checkpoint %s",
                            self.run_id, exc, self.workers, self.checkpoint and self.checkpoint[0])
        k = self.preset.train.grad_accum_steps
        return Result(
            step=int(state.step) // k, state=state, history=history, scorecard=scorecard,
            resumed_from=self.resumed_from,
            checkpoint=Path(self.checkpoint[1]) if self.checkpoint else None,
            checkpoint_sha256=self.checkpoint[2] if self.checkpoint else None,
            outputs=outputs,
        )

    def _train_once(self, deliver, saved, should_stop) -> None:
        cfg = self.preset.train
        k = cfg.grad_accum_steps
        learning_rates = _learning_rates(cfg)
        micro = self.position
        pending = None  # object ref of the averaged gradient the actors apply next
        while micro < cfg.total_steps * k:
            if should_stop is not None:
                should_stop()
            save = pending is not None and checkpoint_due(micro, cfg)
            started = time.perf_counter()
            outs = self._get([a.step.remote(pending, micro, save) for a in self.actors])
            avg, loss_sum, tokens = _all_reduce(outs)
            pending = ray.put(avg)
            step_s = time.perf_counter() - started
            saved(outs[0][4])
            micro += 1
            self.position = micro
            deliver({
                "step": micro // k, "micro_step": micro, "loss": loss_sum / max(tokens, 1.0),
                "grad_norm": float(np.sqrt(np.dot(avg.astype(np.float64), avg.astype(np.float64)))),
                "learning_rate": float(learning_rates[(micro - 1) // k]), "tokens": tokens,
                "step_s": step_s, "compute_s": max(out[3] for out in outs),
            })
        if pending is not None:
            saved(self._get(self.actors[0].finish.remote(pending, checkpoint_due(micro, cfg))))


def _all_reduce(outs: list[tuple[np.ndarray, float, float, float, Any]]) -> tuple[np.ndarray, float, float]:
    """``(sum of gradient sums / total tokens, loss sum, tokens)`` over the actors' shards."""
    tokens = sum(out[2] for out in outs)
    total = outs[0][0].astype(np.float64)
    for out in outs[1:]:
        total += out[0]
    return (total / max(tokens, 1.0)).astype(np.float32), sum(out[1] for out in outs), tokens


def _learning_rates(cfg) -> np.ndarray:
    """The schedule at every update, computed once (the driver runs no JAX per step)."""
    import jax.numpy as jnp

    from trainer.train import make_schedule

    return np.asarray(make_schedule(cfg)(jnp.arange(cfg.total_steps, dtype=jnp.int32)))


__all__ = ["NAMESPACE", "DataCounts", "RayTrainer", "RayUnavailable", "TrainerShutDown", "Worker", "WorkerFailed", "WorkerLost",
           "actor_name", "connect"]
