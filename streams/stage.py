"""Run one processing stage over batches of records, committing only what is durable.

A stage is a mode service hosted by the faust worker. It consumes with
aiokafka's ``getmany`` rather than a faust agent because faust's per-event
path (dispatch, stream iteration, acks) cost ~0.5 ms per event here, 70% of
the processors' CPU (see bench/README.md); a batch costs that once.

The contract is one loop: fetch a batch, let the stage make its output
durable, then commit the batch's offsets. A crash anywhere before the commit
means the batch is delivered again, which every stage tolerates (idempotent
warehouse rows; validate skips what it already produced).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, RebalanceInProgressError
from aiokafka.structs import ConsumerRecord
from mode import Service

log = logging.getLogger(__name__)

# Big enough for a dead letter that carries an oversized original event.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Outputs(Protocol):
    """Where a stage writes records (the worker's idempotent producer)."""

    async def send(self, topic: str, value: bytes, *, key: bytes | None, partition: int | None = None,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future:
        """Enqueue one record; the returned future settles when the broker has it."""


class Stage(Protocol):
    """What a stage does with its records; the runner owns consuming and committing."""

    name: str
    topics: tuple[str, ...]

    async def on_assigned(self, partitions: set[TopicPartition], consumer: AIOKafkaConsumer) -> None:
        """Called after a rebalance, before the first batch of the new assignment is processed."""

    async def process(self, records: Sequence[ConsumerRecord]) -> None:
        """Make the output of ``records`` durable; return only when it is. Never raises for bad input."""


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
        log.info("%s: assigned %s", self.runner.stage.name, sorted(assigned))


class StageRunner(Service):
    """Consumes a stage's topics in its own consumer group and drives the fetch-process-commit loop."""

    def __init__(
        self, stage: Stage, *, bootstrap: str, group: str, max_records: int, wait_ms: int, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.group = group
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.records_processed = 0
        self.assignment_epoch = 0
        self._prepared_epoch = -1
        self.consumer: AIOKafkaConsumer | None = None
        self._consumer_options = dict(
            bootstrap_servers=bootstrap,
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
        self.consumer = AIOKafkaConsumer(**self._consumer_options)
        self.consumer.subscribe(self.stage.topics, listener=_Rebalance(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=self.wait_ms, max_records=self.max_records)
            if not batches:
                continue
            if self._prepared_epoch != self.assignment_epoch:
                epoch = self.assignment_epoch
                await self.stage.on_assigned(set(self.consumer.assignment()), self.consumer)
                self._prepared_epoch = epoch
            records = [record for tp in sorted(batches) for record in batches[tp]]
            await self.stage.process(records)
            self.records_processed += len(records)
            await self._commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            # The partitions moved to another member, which will re-read this batch;
            # every stage's output is idempotent, so that costs time, not correctness.
            log.warning("%s: could not commit %s after a rebalance (%s); the batch will be re-read",
                        self.stage.name, offsets, exc)
