"""``run_tune``: hyperparameter search on Ray Tune, each trial a training run on runs.events.

A tune samples run configs from a checked ``trainer.tune_space.Space`` and
trains each one as a run (``trainer.run.run_training``, one worker, inside
the Tune trial's process), so every trial publishes its own queued / started
/ metrics / checkpoint / evaluated / completed events, all carrying the
tune's ``tune_id`` (RunEvent v4). A tune is nothing more than the runs that
share a tune_id: no topic of its own.

Every optimizer update is reported to Tune (``ray.tune.report``, the loss),
and the ASHA scheduler stops weak trials at its rungs. Reporting is
synchronous in a function trainable: the trial waits in ``report`` until the
driver has decided, and a stop decision surfaces there as ``SystemExit``,
which the trial turns into ``RunStopped``: the run publishes ``stopped``
(``early_stopped: ...``) and ends. A trial's ``cleanup`` (Tune's stop) waits
for that last event before its process goes.

Cancelling is an event, as for runs: ``tracestream tune cancel TUNE_ID``
publishes ``cancel_requested`` for every unfinished trial with the reason
``tune TUNE_ID cancelled``; the driver watches runs.events for it (Ctrl-C
does the same in the driver), tells the trials through a small control actor
why they are being stopped (so they publish ``cancelled``, not ``stopped``),
and stops the experiment: pending trials never start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train._internal.session import get_session, shutdown_session
from ray.tune.result import RESULT_DUPLICATE
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.trainable.function_trainable import FunctionTrainable

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.contracts import RUN_EVENT
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from trainer.run import RunCancelled, RunStopped, run_training
from trainer.runlog import (
    FINISHED,
    RunLog,
    request_cancel,
    run_histories,
    status_of_events,
)
from trainer.tune_space import Space, best_trial, varied_fields

log = logging.getLogger(__name__)

STOP_GRACE_S = 120.0
"""How long a stopped trial's process waits for its run to publish its last event before it goes."""
LAST_EVENT_WAIT_S = 30.0
"""How long the driver, once Tune is done, waits for every trial's last event before it ends the run itself."""


def cancel_reason(tune_id: str) -> str:
    """The ``error`` of the cancel_requested events that cancel a whole tune (not one trial)."""
    return f"tune {tune_id} cancelled"


@dataclass(frozen=True)
class TuneRequest:
    """What to tune: a dataset, a checked space over a base config, and the search's bounds."""

    dataset: str
    version: int | None
    space: Space
    samples: int
    metric: str = "eval_loss"
    mode: str = "min"
    max_concurrent: int | None = None
    grace_period: int | None = None  # ASHA's first rung, in optimizer updates; None: a tenth of the steps
    reduction_factor: int = 3  # ASHA keeps the best 1/reduction_factor of the trials at each rung
    seed: int | None = None  # of the sampling: the same seed draws the same configs
    tune_id: str = field(default_factory=lambda: f"tune-{uuid.uuid4().hex[:12]}")


@dataclass(frozen=True)
class TuneOutcome:
    """How a tune ended: its trials, folded from their run events, and the best of them."""

    tune_id: str
    status: str  # completed | cancelled
    metric: str
    mode: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"tune_id": self.tune_id, "status": self.status, "metric": self.metric, "mode": self.mode,
                "best": self.best, "trials": self.trials}


# --- the trial ------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class _Control:
    """Why trials are being stopped: a cancelled tune (publish ``cancelled``) or the scheduler (``stopped``)."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled


@dataclass(frozen=True)
class _Job:
    """What every trial of a tune shares (sent once through Ray's object store)."""

    settings: Settings
    kafka: KafkaClients
    request: TuneRequest
    control: Any  # the _Control actor's handle
    gpu_share: float = 0.0  # of one GPU per trial (0: the CPU)


class _Trial(FunctionTrainable):
    """A Tune function trainable whose function is one training run, and whose stop waits for its last event."""

    def setup(self, config: dict[str, Any], job: _Job | None = None) -> None:
        self._job = job
        if 0 < job.gpu_share < 1:
            # Trials share a GPU: JAX must not take most of its memory, as it does alone. XLA reads this knob only
            # from the environment; the trial's own Ray worker process is the one it applies to, so it is set, not read.
            os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * job.gpu_share:.2f}"
        self._ended = threading.Event()
        self._stopped_by_tune = False
        super().setup(config)

    def _trainable_func(self, config: dict[str, Any]) -> None:
        try:
            self._train(config)
        finally:
            self._ended.set()
        if not self._stopped_by_tune:  # Tune still waits for results: say this trial is done
            get_session().report({RESULT_DUPLICATE: True})

    def _train(self, config: dict[str, Any]) -> None:
        job = self._job
        request = job.request
        if ray.get(job.control.is_cancelled.remote()):
            return  # started in the moment the tune was cancelled: no run at all
        index = self.trial_id.rsplit("_", 1)[-1]
        run_id = f"{request.tune_id}-{index}"

        def report(update: dict[str, Any]) -> None:
            try:
                tune.report({"loss": update["loss"], "step": update["step"]})
            except SystemExit:  # Tune stopped this trial while it waited for the decision
                self._stopped_by_tune = True
                if ray.get(job.control.is_cancelled.remote()):
                    raise RunCancelled(f"tune {request.tune_id} was cancelled") from None
                raise RunStopped(
                    f"early_stopped: the ASHA scheduler of tune {request.tune_id} stopped this trial after step "
                    f"{update['step']} (training loss {update['loss']:.4f}), not among the best "
                    f"1/{request.reduction_factor} of the trials that reached that step"
                ) from None

        try:
            asyncio.run(run_training(
                job.settings, job.kafka, request.dataset, request.version, request.space.config_of(config),
                run_id=run_id, tune_id=request.tune_id, report=report,
            ))
        except (RunStopped, RunCancelled):
            return  # published: stopped / cancelled

    def cleanup(self) -> None:
        session = get_session()
        try:
            session.finish(timeout=0)  # the run's next report raises SystemExit: it stops there
        finally:
            try:
                if session.training_started and not self._ended.wait(STOP_GRACE_S):
                    log.warning("trial %s: its run did not end within %.0f s of the stop", self.trial_id,
                                STOP_GRACE_S)
            finally:
                shutdown_session()


class _CancelStopper(tune.Stopper):
    """Stops the whole experiment once the tune is cancelled, after telling the trials why."""

    def __init__(self, cancelled: threading.Event, control: Any) -> None:
        self.cancelled = cancelled
        self.control = control
        self.told = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its config into the experiment folder; a copy never sees this process's flag."""
        return {"told": self.told, "control": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, cancelled=threading.Event())

    def stop_all(self) -> bool:
        if self.cancelled.is_set() and not self.told:
            ray.get(self.control.cancel.remote())  # before any trial is stopped: they publish `cancelled`
            self.told = True
        return self.told


# --- the driver -----------------------------------------------------------------------


class _CancelWatcher:
    """A thread that sets ``cancelled`` when a cancel_requested naming this tune arrives on runs.events."""

    def __init__(self, kafka: KafkaClients, topic: str, codec: AvroCodec, tune_id: str,
                 cancelled: threading.Event) -> None:
        self.runlog = RunLog(kafka, topic, tune_id, codec)
        self.reason = cancel_reason(tune_id)
        self.tune_id = tune_id
        self.cancelled = cancelled
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"{tune_id}-cancel-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(60)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        try:
            await self.runlog.open_at_end()
        except Exception as exc:  # noqa: BLE001 - start() raises it in the driver (no runs.events, no broker)
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            await self.runlog.watch_all(
                lambda event: event.get("tune_id") == self.tune_id and event.get("error") == self.reason)
            log.info("tune %s: cancel requested on runs.events", self.tune_id)
            self.cancelled.set()
        except asyncio.CancelledError:
            pass
        finally:
            await self.runlog.close()

    def stop(self) -> None:
        if self.loop is not None and self.task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(30)


def _on_sigint(cancelled: threading.Event) -> Any:
    """Ctrl-C cancels the tune (its trials publish ``cancelled``); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        log.warning("cancelling the tune: its trials stop and publish `cancelled` (Ctrl-C again to interrupt)")
        cancelled.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    return previous


def _fit_off_the_main_thread(tuner: tune.Tuner) -> None:
    """``tuner.fit()`` on a thread of its own, this one waiting (a Ctrl-C still reaches ``_on_sigint``'s handler).

    On the main thread Tune replaces the Ctrl-C handler with its own, which stops the trials as if the
    scheduler had; ours tells them why first. Tune's only other switch is an environment variable, which
    is process-wide; off the main thread Tune installs no handler at all.
    """
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            tuner.fit()
        except BaseException as exc:  # noqa: BLE001 - raised again on the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=fit, name="tune-fit", daemon=True)  # a second Ctrl-C need not wait for it
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def run_tune(settings: Settings, kafka: KafkaClients, request: TuneRequest, *,
             cancelled: threading.Event | None = None) -> TuneOutcome:
    """Run the tune on Ray (``settings.ray_address``, or a local Ray) and fold its trials from runs.events.

    Call it from the main thread (Ctrl-C then cancels the tune) or any other;
    setting ``cancelled`` cancels it as ``tracestream tune cancel`` does.
    Returns once every trial ended; the outcome's ``status`` is ``cancelled``
    when the tune was.
    """
    from trainer.distributed import connect

    codec = AvroCodec(default_registry())
    cancelled = cancelled or threading.Event()
    # Trials run in their own processes and folders: every path they get must be absolute.
    settings = settings.model_copy(update={"home": Path(settings.home).absolute()})
    connect(settings)
    watcher = _CancelWatcher(kafka, settings.topics.runs, codec, request.tune_id, cancelled)
    watcher.start()
    previous = _on_sigint(cancelled)
    control = _Control.remote()
    try:
        horizon = request.space.largest_total_steps()
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric="loss", mode="min", max_t=horizon + 1,
            grace_period=request.grace_period or max(1, horizon // 10), reduction_factor=request.reduction_factor,
        )
        resources, share = _trial_resources(request)
        trainable = tune.with_resources(
            tune.with_parameters(_Trial, job=_Job(settings, kafka, request, control, share)), resources)
        tuner = tune.Tuner(
            trainable,
            param_space={dim.path: _domain(dim) for dim in request.space.dimensions},
            tune_config=tune.TuneConfig(
                num_samples=request.samples, scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=request.seed,
                                                 max_concurrent=request.max_concurrent or 0),
            ),
            run_config=tune.RunConfig(
                name=request.tune_id, storage_path=str(settings.home / "tunes"), stop=_CancelStopper(cancelled, control),
                verbose=0, log_to_file=False,
            ),
        )
        _fit_off_the_main_thread(tuner)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        watcher.stop()
        ray.kill(control)
    trials = asyncio.run(_close_trials(settings, kafka, codec, request.tune_id))
    status = "cancelled" if cancelled.is_set() else "completed"
    return TuneOutcome(request.tune_id, status, request.metric, request.mode, trials,
                       best_trial(trials, request.metric, request.mode))


def _trial_resources(request: TuneRequest) -> tuple[dict[str, float], float]:
    """One CPU per trial; where the cluster has GPUs, an equal share of them among the trials that run at once."""
    cluster = ray.cluster_resources()
    gpus = float(cluster.get("GPU", 0.0))
    if gpus <= 0:
        return {"cpu": 1}, 0.0
    at_once = min(request.samples, request.max_concurrent or max(1, int(cluster.get("CPU", 1))))
    share = min(1.0, gpus / at_once)
    return {"cpu": 1, "gpu": share}, share


def _domain(dim) -> Any:
    if dim.kind == "choice":
        return tune.choice(list(dim.args))
    return getattr(tune, dim.kind)(*dim.args)


async def _close_trials(settings: Settings, kafka: KafkaClients, codec: AvroCodec, tune_id: str) -> list[dict]:
    """The tune's trials from runs.events; a trial whose process went without its last event gets ``cancelled``.

    Tune may report a trial stopped a moment before its run's last event is on
    the log: each gets ``LAST_EVENT_WAIT_S`` to show up first.
    """
    deadline = time.monotonic() + LAST_EVENT_WAIT_S
    while True:
        histories = await tune_histories(kafka, settings.topics.runs, codec, tune_id)
        unended = [events for events in histories.values() if events[-1]["event_type"] not in FINISHED]
        if not unended or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    if unended:
        producer = await kafka.start(kafka.producer(acks="all", enable_idempotence=True))
        try:
            for events in unended:
                last = events[-1]
                event = {**last, "event_type": "cancelled", "at": datetime.now(UTC), "metrics": None,
                         "checkpoint": None, "scorecard": None, "outputs": None,
                         "error": f"run was cancelled: its trial of tune {tune_id} ended without a last event"}
                await producer.send_and_wait(settings.topics.runs, codec.encode(event, RUN_EVENT),
                                             key=last["run_id"].encode())
                events.append(event)
        finally:
            await producer.stop()
    return trial_summaries(histories)


async def tune_histories(kafka: KafkaClients, topic: str, codec: AvroCodec,
                         tune_id: str) -> dict[str, list[dict[str, Any]]]:
    """The events of every run of ``tune_id``, in log order (runs.events read from its beginning)."""
    return {run_id: events for run_id, events in (await run_histories(kafka, topic, codec)).items()
            if any(e.get("tune_id") == tune_id for e in events)}


def trial_summaries(histories: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per trial: status, the sampled fields (``params``: where the configs differ), steps, losses, exact
    match, the last checkpoint and outputs, and why it stopped or failed; in run-id order."""
    rows = []
    for run_id in sorted(histories):
        events = histories[run_id]
        status = status_of_events(e["event_type"] for e in events)
        metrics = [e["metrics"] for e in events if e.get("metrics")]
        card = next((json.loads(e["scorecard"]) for e in reversed(events) if e.get("scorecard")), None) or {}
        checkpoint = next((e["checkpoint"] for e in reversed(events) if e.get("checkpoint")), None)
        config = next((json.loads(e["config"]) for e in events if e.get("config")), {})
        rows.append({
            "run_id": run_id, "status": status, "config": config,
            "steps": metrics[-1]["step"] if metrics else 0, "loss": metrics[-1]["loss"] if metrics else None,
            "eval_loss": card.get("loss"), "exact_match": card.get("exact_match"),
            "checkpoint": checkpoint["path"] if checkpoint else None,
            "outputs": next((e["outputs"] for e in reversed(events) if e.get("outputs")), None),
            "error": next((e["error"] for e in reversed(events) if e.get("error")), None) if status != "completed"
            else None,
        })
    for row, params in zip(rows, varied_fields([r["config"] for r in rows])):
        row["params"] = params
    return rows


class UnknownTune(TracestreamError):
    """No run on runs.events carries that tune_id."""


class TuneAlreadyFinished(TracestreamError):
    """Every trial of the tune already ended; there is nothing to cancel."""


async def request_tune_cancel(kafka: KafkaClients, topic: str, codec: AvroCodec, tune_id: str) -> list[str]:
    """Publish ``cancel_requested`` (reason ``tune TUNE_ID cancelled``) for every unfinished trial of ``tune_id``.

    The tune's driver sees it and stops the whole tune (its pending trials never
    start); each trial publishes ``cancelled``. Returns the run ids asked.

    Raises:
        UnknownTune: no run carries ``tune_id``.
        TuneAlreadyFinished: every trial already ended.
    """
    histories = await tune_histories(kafka, topic, codec, tune_id)
    if not histories:
        raise UnknownTune(f"no run of tune {tune_id!r} on {topic}; a tune's id is printed when it starts")
    live = sorted(run_id for run_id, events in histories.items() if events[-1]["event_type"] not in FINISHED)
    if not live:
        raise TuneAlreadyFinished(f"every trial of tune {tune_id} already ended ({len(histories)} runs); "
                                  "nothing to cancel")
    for run_id in live:
        await request_cancel(kafka, topic, run_id, codec, reason=cancel_reason(tune_id), events=histories[run_id])
    return live


__all__ = ["TuneAlreadyFinished", "TuneOutcome", "TuneRequest", "UnknownTune", "cancel_reason", "request_tune_cancel",
           "run_tune", "trial_summaries", "tune_histories"]
