"""Exactly-once read-process-write: one Kafka transaction per input partition and batch.

aiokafka has no group-metadata fencing (KIP-447), so this is the scheme Kafka
Streams used before it: one transactional producer per input partition, its
``transactional_id`` derived from the group, topic and partition. Whoever owns
partition p opens the producer for p, which fences every older holder of that
id (a member that was paused or partitioned away and still thinks it owns p):
the broker aborts its open transaction and refuses its later commits. Only
then is the committed offset of p read — stable, since the fencing waited for
any transaction of the old holder to complete — and consumption resumes there.
Each batch's outputs and its consumed offset commit in one transaction, so an
input record's outputs are in the log exactly when its offset is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
)

from deploy.kafka_clients import KafkaClients
from streams.coordinates import Coordinates

log = logging.getLogger(__name__)

Output = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
"""(topic, key, value, headers) of one record to produce, in the input's partition."""

# After being fenced, wait this long for the group to move the partition away
# before taking it back (taking it back is safe, only wasted work).
FENCED_BACKOFF_S = 10.0
FAILED_BACKOFF_S = 1.0
# A transaction begun right after the previous commit meets CONCURRENT_TRANSACTIONS until the
# broker has written the markers (KAFKA-5477), and aiokafka waits retry_backoff_ms to ask
# again: at its default 100 ms one offsets-only transaction took 111 ms here, at 10 ms ~10 ms.
RETRY_BACKOFF_MS = 10


class PartitionTransactions:
    """Owns one transactional producer per assigned input partition and commits batches through them."""

    def __init__(self, kafka: KafkaClients, *, group: str, **producer_options) -> None:
        self.kafka = kafka
        self.group = group
        self.producer_options = producer_options
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._retry_at: float | None = None
        self.transactions = 0
        self.transaction_seconds = 0.0

    @property
    def needs_prepare(self) -> bool:
        """A partition lost its producer (fenced, broker error) and is due to be taken back."""
        return self._retry_at is not None and time.monotonic() >= self._retry_at

    def transactional_id(self, tp: TopicPartition) -> str:
        return f"{self.group}-{tp.topic}-{tp.partition}"

    async def take_over(self, partitions: set[TopicPartition], consumer: AIOKafkaConsumer) -> None:
        """Fence older holders of ``partitions`` and position ``consumer`` at their committed offsets.

        Every producer is reopened on every assignment: opening one waits until
        the previous holder's last transaction (ours included) has completed,
        which is what makes the committed offsets read next stable.
        """
        await self.close()
        _quiet_abandoned_deliveries(asyncio.get_running_loop())
        self._consumer, self._retry_at = consumer, None
        if not partitions:
            return
        ordered = sorted(partitions)
        _pause(consumer, ordered)
        opened = await asyncio.gather(*(self._open(tp) for tp in ordered), return_exceptions=True)
        for tp, exc in zip(ordered, opened):
            if isinstance(exc, BaseException):
                self._lose(tp, exc)
        ready = [tp for tp in ordered if tp in self._producers]
        try:
            starts = await consumer.beginning_offsets(ready) if ready else {}
            positions = {tp: await consumer.committed(tp) for tp in ready}
        except KafkaError as exc:
            for tp in ready:
                self._lose(tp, exc)
            return
        for tp in ready:
            committed = positions[tp]
            try:
                consumer.seek(tp, committed if committed is not None else starts[tp])
                consumer.resume(tp)
            except IllegalStateError:
                pass  # revoked meanwhile: the next assignment prepares again

    async def commit(
        self, tp: TopicPartition, offset: int, outputs: Sequence[Output],
        on_committed: Callable[[], None] | None = None,
    ) -> bool:
        """Produce ``outputs`` to partition ``tp.partition`` and commit ``offset`` for ``tp``, atomically.

        Returns False when the transaction could not commit (fenced, or the
        broker failed it): nothing of it is visible to read_committed readers
        and the offset is not committed, so the partition's next owner (or
        this member, once it takes the partition back) redoes the batch.
        """
        producer = self._producers.get(tp)
        if producer is None:
            return False
        started = time.perf_counter()
        deliveries: list[asyncio.Future] = []
        try:
            async with producer.transaction():
                for topic, key, value, headers in outputs:
                    deliveries.append(
                        await producer.send(topic, value, key=key, partition=tp.partition, headers=headers)
                    )
                await producer.send_offsets_to_transaction({tp: offset}, self.group)
        except (KafkaError, IllegalOperation, asyncio.TimeoutError) as exc:
            # IllegalOperation ("not in transaction", not a KafkaError): the producer's transaction was aborted
            # under it, e.g. fenced by the partition's new owner while this batch was being sent.
            # These fail with the transaction, whose error is reported once, below. aiokafka leaves its own
            # transaction waiter unretrieved when the error is fatal (fenced); asyncio would print it at exit.
            for delivery in (*deliveries, producer._txn_manager.wait_for_transaction_end()):
                delivery.add_done_callback(_retrieve)
            self._lose(tp, exc, f"up to {Coordinates(tp.topic, tp.partition, offset)}")
            return False
        self.transactions += 1
        self.transaction_seconds += time.perf_counter() - started
        if on_committed is not None:
            on_committed()
        return True

    async def close(self) -> None:
        producers, self._producers = list(self._producers.values()), {}
        await asyncio.gather(*(_stop_quietly(p.stop()) for p in producers))

    async def _open(self, tp: TopicPartition) -> None:
        options = {"retry_backoff_ms": RETRY_BACKOFF_MS, **self.producer_options}
        producer = self.kafka.producer(transactional_id=self.transactional_id(tp), **options)
        await self.kafka.start(producer)  # InitProducerId: fences the previous holder of this id
        self._producers[tp] = producer

    def _lose(self, tp: TopicPartition, exc: BaseException, span: str | None = None) -> None:
        producer = self._producers.pop(tp, None)
        if self._consumer is not None:
            _pause(self._consumer, [tp])  # no more batches of tp until it is taken back at its committed offset
        if producer is not None:
            asyncio.ensure_future(_stop_quietly(producer.stop()))
        fenced = isinstance(exc, (ProducerFenced, InvalidProducerEpoch))
        backoff = FENCED_BACKOFF_S if fenced else FAILED_BACKOFF_S
        what = f"batch {span}" if span else f"partition {tp.topic}[{tp.partition}]"
        log.warning("%s: %s %s; its transaction is aborted and the batch will be redone (%s)",
                    self.transactional_id(tp), what,
                    "was fenced by a newer owner" if fenced else "failed", exc)
        retry_at = time.monotonic() + backoff
        self._retry_at = retry_at if self._retry_at is None else min(self._retry_at, retry_at)


async def _stop_quietly(stopping: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(stopping, timeout=10)
    except Exception as exc:  # noqa: BLE001 - a fenced or dead producer may fail to stop cleanly
        log.debug("producer stop: %r", exc)


def _pause(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
    assigned = consumer.assignment()
    held = [tp for tp in partitions if tp in assigned]
    if held:
        consumer.pause(*held)


def _retrieve(delivery: asyncio.Future) -> None:
    if not delivery.cancelled():
        delivery.exception()


def _quiet_abandoned_deliveries(loop: asyncio.AbstractEventLoop) -> None:
    """Keep a lost transaction's internal futures out of the log: ``_lose`` already reported it, once.

    aiokafka fails every batch future of a fenced producer; nobody awaits the
    batches of a transaction we gave up, so asyncio would print each with a
    traceback at garbage collection ("Future exception was never retrieved").
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "quiet_abandoned_deliveries", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == "Future exception was never retrieved" and isinstance(
            context.get("exception"), KafkaError
        ):
            log.debug("abandoned delivery of a lost transaction: %r", context["exception"])
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiet_abandoned_deliveries = True
    loop.set_exception_handler(handler)
