"""Data-parallel training on Ray: N actors joined into one JAX mesh; the driver starts them and relays metrics.

Each actor (``Worker``) is one process of the run: it joins the others
through ``jax.distributed`` (``trainer.mesh``; rank 0's process hosts the
coordinator), replays the dataset through the range reader and holds a
``trainer.loop.Session``, the same loop that trains in one process. Every
step the driver calls ``step()`` on every actor; the actors run one jitted
step over the global batch, each feeding its own rows, and XLA all-reduces
the gradients between them (Gloo on CPUs, NCCL on GPUs). The driver gets
back a few numbers per step and never a gradient or a weight.

Failure: a dead actor surfaces in the driver as ``RayActorError`` (the
driver waits on every actor's call at once, so one blocked in a collective
with a dead peer does not hide it); the driver kills the others, starts
fresh processes (``jax.distributed`` joins once per process) with a new
coordinator, and they restore the last checkpoint. Checkpoints are written
by all actors together (Orbax); on a cluster the workdir must be on storage
every node sees. Rank 0 hashes them, evaluates and exports.
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

import ray
from ray.exceptions import RayActorError, RayTaskError

from dataset.manifest import Manifest
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.errors import TracestreamError
from trainer.config import ConfigError, Preset
from trainer.loop import CheckpointHook, MetricsHook, Result

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
    """One process of a run: joins the mesh, replays the data, runs a ``Session``. Runs as a Ray actor."""

    def __init__(self, rank: int, workers: int, preset: Preset, kafka: KafkaClients, manifest: Manifest,
                 workdir: str | None, compilation_cache: str | None = None) -> None:
        self.rank, self.workers, self.preset = rank, workers, preset
        self.kafka, self.manifest, self.workdir = kafka, manifest, workdir
        self.compilation_cache = compilation_cache
        self.session = None

    def address(self) -> str:
        """Where this actor's process can host the run's coordinator (called on rank 0)."""
        from trainer.mesh import free_address

        return free_address(ray.util.get_node_ip_address())

    def load(self, coordinator: str) -> dict[str, Any]:
        """Join the mesh, replay the dataset, build the session (restoring the last checkpoint)."""
        import jax

        from schemas.codec import AvroCodec
        from schemas.registry import default_registry
        from trainer.data import read_examples
        from trainer.loop import Session
        from trainer.mesh import join

        join(coordinator, self.workers, self.rank)
        if self.compilation_cache:
            # Fresh actors (a restart after a death, the next run) reuse the compiled step instead of
            # spending seconds compiling it again.
            jax.config.update("jax_compilation_cache_dir", self.compilation_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        train, evals = asyncio.run(read_examples(self.kafka, self.manifest, AvroCodec(default_registry())))
        info: dict[str, Any] = {"train": len(train), "eval": len(evals), "checkpoint": None,
                                "platform": jax.default_backend(), "next_batch": 0}
        if not train:
            return info
        self.session = session = Session(self.preset, train, evals if self.rank == 0 else [], self.workdir)
        return {**info, "truncated": session.truncated, "max_len": session.lm.max_len, "model": session.lm.info,
                "checkpoint": session.checkpoint, "next_batch": session.micro}

    def step(self) -> tuple[dict[str, Any], Any, float]:
        """One micro-step with the other actors: ``(metrics, the checkpoint it saved or None, seconds)``."""
        started = time.perf_counter()
        metrics, saved = self.session.step()
        return metrics, saved, time.perf_counter() - started

    def finish(self) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """With the other actors: rank 0 exports and evaluates (``Session.finish``)."""
        return self.session.finish()

    def all_reduce_seconds(self) -> float:
        """One gradient-sized all-reduce across the actors (``bench.training``)."""
        return self.session.all_reduce_seconds()


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
    method blocks, so async callers run them in a thread. The driver holds
    no weights and no gradients; JAX computes in the actors.
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
        coordinator = self._get(self.actors[0].address.remote())
        infos = self._get([a.load.remote(coordinator) for a in self.actors])
        first = infos[0]
        self.position = first["next_batch"]
        if first["checkpoint"] is not None:
            update, path, sha = first["checkpoint"]
            self.checkpoint = (update, str(path), sha)
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
        """``ray.get``, failing on the first call that fails: one actor blocked in a collective with a dead peer
        must not hide the dead one's ``RayActorError``."""
        if not isinstance(refs, list):
            refs = [refs]
            single = True
        else:
            single = False
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)
            values = ray.get(refs)
        except RayTaskError as exc:
            raise _unwrap(exc) from None
        return values[0] if single else values

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
                outputs, scorecard = self._get([a.finish.remote() for a in self.actors])[0]
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
            step=self.position // k, state=None, history=history, scorecard=scorecard,
            resumed_from=self.resumed_from,
            checkpoint=Path(self.checkpoint[1]) if self.checkpoint else None,
            checkpoint_sha256=self.checkpoint[2] if self.checkpoint else None,
            outputs=outputs,
        )

    def _train_once(self, deliver, saved, should_stop) -> None:
        cfg = self.preset.train
        while self.position < cfg.total_steps * cfg.grad_accum_steps:
            if should_stop is not None:
                should_stop()
            started = time.perf_counter()
            outs = self._get([a.step.remote() for a in self.actors])
            step_s = time.perf_counter() - started
            metrics, checkpoint, _ = outs[0]
            if checkpoint is not None:
                saved((checkpoint[0], str(checkpoint[1]), checkpoint[2]))
            self.position = metrics["micro_step"]
            deliver({**metrics, "step_s": step_s, "compute_s": max(out[2] for out in outs)})

    def all_reduce_seconds(self) -> float:
        """One gradient-sized all-reduce across the current actors (``bench.training``)."""
        return max(self._get([a.all_reduce_seconds.remote() for a in self.actors]))


__all__ = ["NAMESPACE", "DataCounts", "RayTrainer", "RayUnavailable", "TrainerShutDown", "Worker", "WorkerFailed", "WorkerLost",
           "actor_name", "connect"]
