"""Run one processing stage over batches of records, committing only what is durable.

A stage is a mode service hosted by the faust worker. It consumes with
aiokafka's ``getmany`` rather than a faust agent because faust's per-event
path (dispatch, stream iteration, acks) cost ~0.5 ms per event here, 70% of
the processors' CPU (see bench/README.md); a batch costs that once.

The contract is one loop: fetch a batch, let the stage make its output
durable, then commit the batch's offsets — through the consumer group, or, for
a transactional stage, inside the stage's own transaction. A crash anywhere
before the commit means the batch is delivered again. Partitions move between
members at any time: a batch whose partitions were revoked while it was
processed is dropped, and the new owner redoes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from aiokafka.structs import ConsumerRecord
from mode import Service

from deploy.kafka_clients import KafkaClients

log = logging.getLogger(__name__)

# Big enough for a dead letter that carries an oversized original event.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

Batches = Mapping[TopicPartition, Sequence[ConsumerRecord]]


class Outputs(Protocol):
    """Where a stage writes records (the worker's idempotent producer)."""

    async def send(self, topic: str, value: bytes, *, key: bytes | None, partition: int | None = None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future:
        """Enqueue one record; the returned future settles when the broker has it."""


class Stage(Protocol):
    """What a stage does with its records; the runner owns consuming."""

    name: str
    topics: tuple[str, ...]
    needs_prepare: bool
    """True when the stage lost a partition's state (e.g. its transactional producer) and must prepare again."""

    async def on_assigned(self, partitions: set[TopicPartition], consumer: AIOKafkaConsumer) -> bool:
        """Prepare for the current assignment before its first batch.

        Returns True when it moved the consumer's positions (then records
        fetched before it are stale and are dropped).
        """

    async def process(self, batches: Batches, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Make the output of ``batches`` durable; return only when it is. Never raises for bad input.

        ``offsets`` are the positions to commit once it is done (every partition
        of ``batches``, and partitions whose position only stepped over
        transaction markers). Returns the offsets the runner must still commit
        through the consumer group: none for a stage that commits them in its
        own transaction.
        """

    async def close(self) -> None:
        """Release what the stage holds (producers); called when the runner stops."""


class StageFailed(Exception):
    """A stage met an error it cannot recover from; the message names the topic and partitions."""


class _Rebalance(ConsumerRebalanceListener):
    """Marks every rebalance; the fetch loop prepares the stage before the next batch.

    aiokafka hands out records of a new assignment while ``on_partitions_assigned``
    is still running, so preparing there would race the first batch. Revocation,
    by contrast, is awaited before the group is rejoined (on the first join too).
    """

    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.runner.assignment_epoch += 1
        log.info("%s: revoked %s", self.runner.stage.name, sorted(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.runner.assignment_epoch += 1
        log.info("%s: assigned %s", self.runner.stage.name, sorted(assigned))


class StageRunner(Service):
    """Consumes a stage's topics in its own consumer group and drives the fetch-process-commit loop."""

    def __init__(
        self, stage: Stage, *, kafka: KafkaClients, group: str, max_records: int, wait_ms: int, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.kafka = kafka
        self.group = group
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.records_processed = 0
        self.assignment_epoch = 0
        self._prepared_epoch = 0
        self._positions: dict[TopicPartition, int] = {}
        self.failure: StageFailed | None = None
        self._current: Batches = {}  # the batch in process, for the error that names it
        self.consumer: AIOKafkaConsumer | None = None
        self._consumer_options = dict(
            group_id=group,
            client_id=f"{group}-{stage.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
            max_poll_interval_ms=24 * 3600 * 1000,  # a warehouse outage may hold a batch for long
        )

    @property
    def shortlabel(self) -> str:
        return f"stage:{self.stage.name}"

    async def on_start(self) -> None:
        # Made here: aiokafka clients belong to the running event loop.
        consumer = self.kafka.consumer(**self._consumer_options)
        consumer.subscribe(self.stage.topics, listener=_Rebalance(self))
        self.consumer = await self.kafka.start(consumer)

    async def on_stop(self) -> None:
        await self.stage.close()
        if self.consumer is not None:
            await self.consumer.stop()

    @Service.task
    async def _run(self) -> None:
        try:
            while not self.should_stop:
                await self._step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - turned into one clear error that stops the worker
            self._fail(exc)

    async def _step(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
        if self._prepared_epoch != self.assignment_epoch or self.stage.needs_prepare:
            epoch = self.assignment_epoch
            self._positions = {}
            moved = await self.stage.on_assigned(set(self.consumer.assignment()), self.consumer)
            self._prepared_epoch = epoch
            if moved:
                return
        assignment = self.consumer.assignment()
        batches = {tp: records for tp, records in batches.items() if records and tp in assignment}
        offsets = await self._advanced(batches)
        if not offsets:
            return
        self._current = batches
        epoch = self.assignment_epoch
        to_commit = await self.stage.process(batches, offsets)
        self.records_processed += sum(len(records) for records in batches.values())
        self._positions.update(offsets)
        if to_commit:
            await self._commit(to_commit, moved=epoch != self.assignment_epoch)

    async def _advanced(self, batches: Batches) -> dict[TopicPartition, int]:
        """The consumer's position for each partition that has records or moved past records it skips.

        The position, not the last record's offset + 1, is what gets committed:
        under read_committed the consumer steps over transaction markers and
        aborted records without returning them, and committing the last
        record + 1 would leave the group forever "behind" by a marker
        (as Kafka Streams found, KAFKA-6607).
        """
        offsets: dict[TopicPartition, int] = {}
        paused = self.consumer.paused()
        for tp in self.consumer.assignment():
            if tp in paused and tp not in batches:
                continue
            position = await self.consumer.position(tp)
            known = self._positions.get(tp)
            if tp in batches or (known is not None and position > known):
                offsets[tp] = max(position, batches[tp][-1].offset + 1) if tp in batches else position
            elif known is None:
                self._positions[tp] = position  # where the assignment starts: nothing to commit yet
        return offsets

    async def _commit(self, offsets: dict[TopicPartition, int], *, moved: bool) -> None:
        assigned = self.consumer.assignment()
        kept = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if len(kept) < len(offsets) or moved:
            log.info("%s: partitions moved while a batch was processed; committing only %s (the new owner "
                     "redoes the rest, which is idempotent)", self.stage.name, sorted(kept))
        if not kept:
            return
        try:
            await self.consumer.commit(kept)
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            # The partitions moved to another member, which will re-read this batch;
            # the stage's output is idempotent, so that costs time, not correctness.
            log.warning("%s: could not commit %s after a rebalance (%s); the batch will be re-read",
                        self.stage.name, _describe(kept), exc)

    def _fail(self, exc: Exception) -> None:
        where = _describe(self._current)
        kind = "Kafka" if isinstance(exc, KafkaError) else type(exc).__name__
        self.failure = StageFailed(f"{self.stage.name} stopped on {kind} error {exc!r} while processing {where} "
                                   f"(group {self.group}); nothing past the last commit is lost, a restart redoes it")
        log.error("%s", self.failure)
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's graceful path; run_worker exits non-zero


def _describe(batches: Mapping[TopicPartition, object]) -> str:
    parts = []
    for tp, value in sorted(batches.items()):
        if isinstance(value, int):
            parts.append(f"{tp.topic}[{tp.partition}]@{value}")
        elif value:
            parts.append(f"{tp.topic}[{tp.partition}]@{value[0].offset}..{value[-1].offset}")
    return ", ".join(parts) or "(no batch)"
