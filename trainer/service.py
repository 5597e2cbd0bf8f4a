"""``tracestream trainer``: start a training run for each ready dataset the policy names.

The service consumes datasets.events in its own consumer group
(``<app_id>.trainer``); a ``ready`` event whose dataset matches a policy rule
starts one run with a run id derived from the event's coordinates, so the
event and its run are tied for good:

- **At most once per event.** Before starting, the service folds runs.events
  for that run id. A run that already ended (completed, failed, cancelled)
  (or was asked to cancel) is never started again; one that was queued but never ended — the trainer
  died under it — is resumed with the same id, which continues from its last
  checkpoint instead of starting over. The dataset event's offset is
  committed only after its run ended, so a crash re-delivers it and lands in
  one of those two cases.
- **One run at a time.** datasets.events has one partition; while a run
  trains, that partition is paused and the consumer keeps polling, so the
  group does not evict a trainer whose run outlasts ``max.poll.interval.ms``.
  A second trainer in the same group is a hot standby.
- **Bad input does not stop it.** A missing or expired dataset, or a config
  that does not parse, ends that run with a ``failed`` event (run_training
  publishes it); an undecodable dataset event is logged with its
  coordinates and skipped.
- **Models.** A rule with ``register_as`` registers each completed run as
  the next version of that model (``trainer.registry.register``). With a
  ``gate`` the new version is compared with the version holding the gate's
  stage (``against``) and publishes ``gated``; it is promoted to
  ``promote_to`` only if it passed (when no version holds that stage yet
  there is nothing to regress from, and the gate is skipped). A
  registration, gate or promotion that is refused is logged and the service
  goes on; the run stays completed either way.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from dataset.events import DatasetEvent
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.contracts import DATASET_EVENT
from schemas.errors import TracestreamError
from schemas.model_registry import ModelRef
from schemas.registry import default_registry
from trainer import registry as models
from trainer.policy import Policy, Rule
from trainer.run import RunCancelled, run_training
from trainer.runlog import CANCEL_REQUESTED, FINISHED, run_histories

log = logging.getLogger(__name__)

# A run whose driver died after someone asked to cancel it is not resumed either.
NOT_RESUMED = FINISHED | {CANCEL_REQUESTED}


def trainer_group(settings: Settings) -> str:
    """Consumer group of the trainer service (reads datasets.events)."""
    return f"{settings.app_id}.trainer"


def run_id_for(name: str, version: int, partition: int, offset: int) -> str:
    """The run a dataset event starts: the same event always names the same run."""
    return f"{name}-v{version}-p{partition}o{offset}"


@dataclass(frozen=True)
class Decision:
    """What the service did with one dataset event (logged, and returned for tests)."""

    topic: str
    partition: int
    offset: int
    action: str
    """started, resumed, skipped"""
    reason: str
    run_id: str | None = None
    status: str | None = None
    """How the run ended, when one ran."""
    model: str | None = None
    """What became of a completed run under ``register_as``: NAME@VERSION, the gate, the promotion (or why not)."""


async def run_statuses(kafka: KafkaClients, topic: str, codec: AvroCodec) -> dict[str, str]:
    """Each run id on runs.events with the type of its latest event."""
    histories = await run_histories(kafka, topic, codec)
    return {run_id: events[-1]["event_type"] for run_id, events in histories.items()}


class TrainerService:
    def __init__(self, settings: Settings, kafka: KafkaClients, policy: Policy, *, codec: AvroCodec | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.policy = policy
        self.codec = codec or AvroCodec(default_registry())
        self.decisions: list[Decision] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Consume datasets.events until ``stop`` is set; stopping cancels the run in progress."""
        topic = self.settings.topics.datasets
        consumer = await self.kafka.start(self.kafka.consumer(
            topic, group_id=trainer_group(self.settings),
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
        ))
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=1)
                for tp, records in batch.items():
                    for record in records:
                        consumer.pause(tp)
                        try:
                            decision = await self._while_polling(consumer, self.handle(record), stop)
                        finally:
                            consumer.resume(tp)
                        if decision is None:  # stopped in the middle: the event is re-delivered on restart
                            return
                        await consumer.commit({tp: record.offset + 1})
        finally:
            await consumer.stop()

    async def _while_polling(self, consumer: AIOKafkaConsumer, work, stop: asyncio.Event) -> Decision | None:
        """Await ``work`` while polling the (paused) consumer, so the group sees the trainer alive."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not task.done():
                await asyncio.wait({task, stopping}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done() and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return None
                await consumer.getmany(timeout_ms=0)  # nothing arrives while paused; keeps the poll interval fresh
            return task.result()
        finally:
            stopping.cancel()

    async def handle(self, record: ConsumerRecord) -> Decision:
        where = (record.topic, record.partition, record.offset)
        try:
            event = DatasetEvent.from_avro(self.codec.decode_latest(record.value, DATASET_EVENT)[0])
        except TracestreamError as exc:
            log.error("skipping undecodable dataset event at %s[%d]@%d: %s", *where, exc)
            return self._decided(Decision(*where, "skipped", f"undecodable: {exc}"))
        name, version = event.manifest.name, event.manifest.version
        if event.event_type != "ready":
            return self._decided(Decision(*where, "skipped", f"{name}@{version} is {event.event_type}, not ready"))
        rule = self.policy.rule_for(name)
        if rule is None:
            return self._decided(Decision(*where, "skipped", f"no policy rule matches dataset {name}"))
        run_id = run_id_for(name, version, record.partition, record.offset)
        status = (await run_statuses(self.kafka, self.settings.topics.runs, self.codec)).get(run_id)
        if status in NOT_RESUMED:
            return self._decided(Decision(*where, "skipped", f"run {run_id} already {status}", run_id, status))
        action = "started" if status is None else "resumed"
        log.info("%s run %s for %s@%d (dataset event %s[%d]@%d)", action, run_id, name, version, *where)
        try:
            await run_training(self.settings, self.kafka, name, version, rule.config,
                               run_id=run_id, workers=rule.workers)
            ended = "completed"
        except RunCancelled:
            ended = "cancelled"
        except TracestreamError as exc:  # run_training has published `failed` with this reason
            log.warning("run %s failed: %s", run_id, exc)
            ended = "failed"
        reason = f"{name}@{version} matched rule {rule.dataset!r}"
        model = await self._register(rule, run_id) if ended == "completed" and rule.register_as else None
        return self._decided(Decision(*where, action, reason, run_id, ended, model))

    async def _register(self, rule: Rule, run_id: str) -> str:
        """Register the run under ``rule.register_as``, gate it and promote it as the rule says; returns what happened."""
        try:
            version = await models.register(self.settings, self.kafka, run_id, rule.register_as, codec=self.codec)
            said = f"{version.name}@{version.version}"
            if rule.gate is not None:
                holders = (await models.load_registry(self.kafka, self.settings.topics.models, self.codec)).model(
                    version.name).stages
                if rule.gate.against in holders:
                    _, baseline, outcome = await models.gate(
                        self.settings, self.kafka, ModelRef(version.name, version.version),
                        ModelRef(version.name, stage=rule.gate.against), metric=rule.gate.metric,
                        max_drop=rule.gate.max_drop, by="tracestream trainer", codec=self.codec)
                    said += (f", gate {'passed' if outcome.passed else 'failed'} against "
                             f"{baseline.name}@{baseline.version} ({outcome.metric} {outcome.candidate} vs "
                             f"{outcome.baseline})")
                    if not outcome.passed:
                        return said + ", not promoted"
                else:
                    said += f", no version in {rule.gate.against} to gate against"
            if rule.promote_to is not None:
                await models.promote(self.settings, self.kafka, ModelRef(version.name, version.version),
                                     rule.promote_to, by="tracestream trainer",
                                     reason=f"policy rule {rule.dataset!r}", codec=self.codec)
                said += f", promoted to {rule.promote_to}"
            return said
        except TracestreamError as exc:
            log.warning("run %s completed but was not registered/promoted as %s: %s", run_id, rule.register_as, exc)
            return f"not registered as {rule.register_as}: {exc}"

    def _decided(self, decision: Decision) -> Decision:
        log.info("dataset event %s[%d]@%d: %s (%s)", decision.topic, decision.partition, decision.offset,
                 decision.action, decision.reason)
        self.decisions.append(decision)
        return decision


__all__ = ["Decision", "TrainerService", "run_id_for", "run_statuses", "trainer_group"]
