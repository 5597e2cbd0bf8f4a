"""``run_training``: one local training run on a dataset, announced on runs.events.

The run names the exact dataset manifest (name, version, ``content_sha256``)
it trained on, so every model can be traced back to Kafka offsets. Events,
all keyed by ``run_id``:

    queued → started → metrics / checkpoint … → evaluated → completed (outputs)
                       (any failure)        → failed
                       (cancel_requested)   → cancelled
                       (a tune's scheduler) → stopped

One worker trains in this process; more train data-parallel on Ray actors
(``trainer.distributed``), which restart from the last checkpoint when one
dies. A rerun with the same ``run_id`` resumes from the workdir's checkpoint
and does not publish a step twice (``trainer.runlog`` reads what was
published). ``tracestream runs cancel`` publishes ``cancel_requested``; the
run watches for it and stops.

Training runs in a worker thread (``asyncio.to_thread``); its hooks hand
events to the event loop with ``loop.call_soon_threadsafe``, and one
publisher task sends them in order through an idempotent producer
(``acks=all``), so the log order is the order things happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataset.catalog import load_catalog
from dataset.hashing import canonical_bytes
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.contracts import RUN_EVENT
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from trainer.config import ConfigError, Preset, from_mapping
from trainer.data import no_train_split, read_examples
from trainer.loop import train_and_evaluate
from trainer.runlog import Published, RunLog

log = logging.getLogger(__name__)



class RunFailed(TracestreamError):
    """A training run stopped with an error that is not a tracestream error of its own (a bug, a crash)."""


class RunCancelled(TracestreamError):
    """The run was cancelled before it finished (``tracestream runs cancel``); ``cancelled`` was published."""


class RunStopped(TracestreamError):
    """A tune's scheduler stopped the run early (raised by ``report``); ``stopped`` was published, naming why."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended (only completed runs return; failed ones raise)."""

    run_id: str
    status: str
    steps: int
    final_loss: float | None
    scorecard: dict[str, Any]
    checkpoint: Path | None
    workers: int = 1
    restarts: int = 0  # times the run's actors died and were restarted from the checkpoint
    outputs: tuple[dict[str, str], ...] = ()  # a base model run's exports (adapter, merged / model): kind, path, sha256


def event_json(value: Any) -> str:
    """``value`` as the canonical JSON text (``dataset.hashing.canonical_bytes``), non-finite floats as null."""
    return canonical_bytes(_finite(value)).decode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_json(preset: Preset) -> str:
    """The run's config as canonical JSON: ``model`` and ``train``, or ``base_model``, ``lora`` and ``train``."""
    if preset.base is None:
        return event_json({"model": dataclasses.asdict(preset.model), "train": dataclasses.asdict(preset.train)})
    return event_json({"base_model": dataclasses.asdict(preset.base), "train": dataclasses.asdict(preset.train),
                           "lora": None if preset.lora is None else dataclasses.asdict(preset.lora),
                           "max_len": preset.max_len})


def _now() -> datetime:
    return datetime.now(UTC)


class _Publisher:
    """Sends RunEvents in queue order from one task; events may be queued from any thread."""

    def __init__(self, kafka: KafkaClients, topic: str, codec: AvroCodec, run_id: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.codec = codec
        self.key = run_id.encode()
        self.producer = kafka.producer(acks="all", enable_idempotence=True)
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.task: asyncio.Task | None = None
        self.sent = 0

    async def start(self) -> None:
        await self.kafka.start(self.producer)
        self.task = asyncio.create_task(self._drain(), name=f"run-events-{self.key.decode()}")

    def put(self, event: dict[str, Any]) -> None:
        """From the event loop's thread."""
        self.queue.put_nowait(event)

    def put_threadsafe(self, event: dict[str, Any]) -> None:
        """From any other thread (the training thread's hooks)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def _drain(self) -> None:
        while (event := await self.queue.get()) is not None:
            # Encode here, not in the hook: a bad event fails the run instead of the training thread.
            await self.producer.send_and_wait(self.topic, self.codec.encode(event, RUN_EVENT), key=self.key)
            self.sent += 1

    async def close(self) -> None:
        """Send everything queued, then stop; raises what the sending task raised."""
        try:
            if self.task is not None:
                self.queue.put_nowait(None)
                await self.task
        finally:
            await self.producer.stop()

    def broken(self) -> BaseException | None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            return self.task.exception()
        return None


async def run_training(
    settings: Settings,
    kafka: KafkaClients,
    dataset: str,
    version: int | None,
    config: Mapping[str, Any] | None,
    *,
    run_id: str | None = None,
    workdir: Path | None = None,
    metrics_every: int = 1,
    workers: int = 1,
    max_restarts: int = 3,
    tune_id: str | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Train on ``dataset`` (``version`` None: the latest ready one) and publish the run's events.

    ``config`` is ``trainer.config.from_mapping``'s input (default: the tiny
    preset). Metrics are published every ``metrics_every`` optimizer steps
    (and for the last one); checkpoints go to ``workdir`` (default
    ``settings.home / "runs" / run_id``). ``workers`` > 1 trains on that many
    Ray actors (``settings.ray_address``, or a local Ray started here), whose
    death restarts them from the last checkpoint up to ``max_restarts`` times.
    A tune's trial (``trainer.tune``) passes its ``tune_id``, which every event
    carries, and ``report``, called from the training thread with ``{step,
    loss}`` after every optimizer update; it may raise ``RunStopped`` (or
    ``RunCancelled``) to end the run there.

    Raises:
        UnknownDataset: no ready dataset of that name/version (a ``failed`` event is published).
        ConfigError: the config is invalid or the dataset has no training records (likewise).
        RunCancelled: a ``cancel_requested`` event arrived (``cancelled`` is published).
        RunStopped: ``report`` stopped the run early (``stopped`` is published).
        RunFailed: training itself failed (likewise; the original error is chained).
    """
    if isinstance(metrics_every, bool) or not isinstance(metrics_every, int) or metrics_every < 1:
        raise ConfigError(f"metrics_every must be an integer >= 1, got {metrics_every!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    run_id = run_id or uuid.uuid4().hex
    workdir = Path(workdir) if workdir is not None else settings.home / "runs" / run_id
    codec = AvroCodec(default_registry())
    base: dict[str, Any] = {
        "run_id": run_id, "dataset_name": dataset, "dataset_version": version or 0, "dataset_sha256": "",
        "config": "", "seed": 0, "workers": workers, "tune_id": tune_id,
    }

    def event(event_type: str, **fields: Any) -> dict[str, Any]:
        return {**base, "event_type": event_type, "at": _now(), "metrics": None, "checkpoint": None,
                "scorecard": None, "error": None, "truncated_examples": None, "outputs": None, **fields}

    publisher = _Publisher(kafka, settings.topics.runs, codec, run_id)
    await publisher.start()
    stop = threading.Event()
    runlog = RunLog(kafka, settings.topics.runs, run_id, codec)
    watcher: asyncio.Task | None = None
    trainer = None
    try:
        try:
            published = await runlog.open()
            watcher = asyncio.create_task(runlog.watch(stop.set), name=f"run-cancel-{run_id}")
            manifest = (await load_catalog(kafka, settings.topics.datasets, codec)).get(dataset, version).manifest
            base.update(dataset_version=manifest.version, dataset_sha256=manifest.content_sha256)
            try:
                preset = from_mapping(config if config is not None else {})
            except ConfigError as exc:
                raise ConfigError(f"invalid trainer config for run {run_id}: {exc}") from exc
            base.update(config=config_json(preset), seed=preset.train.seed)
            publisher.put(event("queued"))
            hooks = _Hooks(preset, metrics_every, publisher.put_threadsafe, event, stop, published, report)
            if workers == 1:
                train, evals = await read_examples(kafka, manifest, codec)
                if not train:
                    raise no_train_split(manifest)
                workdir.mkdir(parents=True, exist_ok=True)
                result = await asyncio.to_thread(
                    train_and_evaluate, preset.model, preset.train, train, evals, workdir,
                    on_metrics=hooks.on_metrics, on_checkpoint=hooks.on_checkpoint, on_started=hooks.on_started,
                    base=preset.base, lora=preset.lora,
                )
                eval_count = len(evals)
            else:
                from trainer.distributed import RayTrainer, connect

                trainer = RayTrainer(preset, kafka, manifest, workdir, workers=workers, run_id=run_id,
                                     max_restarts=max_restarts, compilation_cache=settings.cache_dir / "jax")
                connect(settings)
                workdir.mkdir(parents=True, exist_ok=True)
                counts = await asyncio.to_thread(trainer.start)
                if not counts.train:
                    raise no_train_split(manifest)
                hooks.truncated = counts.truncated
                publisher.put(event("started", truncated_examples=counts.truncated))
                result = await asyncio.to_thread(
                    trainer.train, on_metrics=hooks.on_metrics, on_checkpoint=hooks.on_checkpoint,
                    should_stop=hooks.check_stop,
                )
                eval_count = counts.eval
            scorecard = dict(result.scorecard)
            if not eval_count:
                scorecard["note"] = (
                    f"dataset {manifest.name}@{manifest.version} has an empty eval split; nothing was scored. "
                    "Create the dataset with --split eval=0.1 (or similar) to get a scorecard."
                )
            publisher.put(event("evaluated", scorecard=event_json(scorecard)))
            publisher.put(event("completed", outputs=list(result.outputs) or None))
            await publisher.close()
        except BaseException as exc:
            stop.set()  # a cancelled run's training thread stops at its next step
            if trainer is not None:
                await asyncio.shield(asyncio.to_thread(trainer.shutdown))
            cancelled = isinstance(exc, (asyncio.CancelledError, RunCancelled))
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TracestreamError) else str(exc)
            ending = "cancelled" if cancelled else "stopped" if isinstance(exc, RunStopped) else "failed"
            await _publish_last(publisher, event(ending, error="run was cancelled" if cancelled else error))
            if cancelled or isinstance(exc, TracestreamError) or not isinstance(exc, Exception):
                raise
            raise RunFailed(f"run {run_id} failed: {error}") from exc
    finally:
        stop.set()
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await runlog.close()
        if trainer is not None:
            await asyncio.to_thread(trainer.shutdown)
    return RunOutcome(
        run_id=run_id, status="completed", steps=result.step, final_loss=hooks.final_loss,
        scorecard=scorecard, checkpoint=result.checkpoint, workers=workers,
        restarts=trainer.restarts if trainer is not None else 0, outputs=tuple(result.outputs),
    )


async def _publish_last(publisher: _Publisher, event: dict[str, Any]) -> None:
    """Queue the failed/cancelled event after whatever is queued and flush; log if even that fails."""
    try:
        if publisher.broken() is None and publisher.task is not None and not publisher.task.done():
            publisher.put(event)
            await publisher.close()
        else:
            await publisher.producer.stop()
            raise RuntimeError(f"run-event publisher is down: {publisher.broken()!r}")
    except Exception:
        log.exception("could not publish the %s event of run %s", event["event_type"], event["run_id"])


class _Hooks:
    """The training thread's hooks: aggregate micro-steps into per-update metrics and queue events."""

    def __init__(self, preset: Preset, every: int, put, event, stop: threading.Event,
                 published: Published, report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.published = published  # what an earlier attempt of this run published: not again
        self.k = preset.train.grad_accum_steps
        self.total = preset.train.total_steps
        self.every = every
        self.put = put
        self.event = event
        self.stop = stop
        self.losses: list[float] = []
        self.tokens = 0.0
        self.since = time.perf_counter()
        self.final_loss: float | None = None
        self.truncated: int | None = None  # train examples cut to max_len, once known
        self.report = report  # a tune trial's: sees every update's loss, may stop the run

    def on_started(self, info: dict[str, Any]) -> None:
        """The model is built and the data tokenized (in-process runs): publish ``started``."""
        self.truncated = int(info["truncated"])
        self.put(self.event("started", truncated_examples=self.truncated))
        self.since = time.perf_counter()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise RunCancelled("run was cancelled")

    def on_metrics(self, m: dict[str, Any]) -> None:
        self.check_stop()
        self.losses.append(float(m["loss"]))
        self.tokens += float(m.get("tokens", 0.0))
        if m["micro_step"] % self.k:
            return
        now = time.perf_counter()
        loss = sum(self.losses) / len(self.losses)
        tokens_per_s = self.tokens / (now - self.since) if now > self.since else 0.0
        self.losses, self.tokens, self.since = [], 0.0, now
        self.final_loss = loss
        step = int(m["step"])
        if step > self.published.metrics_step and (step % self.every == 0 or step == self.total):
            self.put(self.event("metrics", metrics={
                "step": step, "loss": loss, "learning_rate": float(m["learning_rate"]),
                "grad_norm": float(m["grad_norm"]), "tokens_per_s": tokens_per_s,
            }, truncated_examples=self.truncated))
        if self.report is not None:
            self.report({"step": step, "loss": loss})  # after the metrics event: a stop follows the loss it saw

    def on_checkpoint(self, step: int, path: Path, sha256: str) -> None:
        if step <= self.published.checkpoint_step:
            return
        self.put(self.event("checkpoint", checkpoint={"step": int(step), "path": str(path), "sha256": sha256}))


__all__ = ["RunCancelled", "RunFailed", "RunOutcome", "RunStopped", "event_json", "run_training"]
