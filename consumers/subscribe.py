"""Subscribe to a topic: typed records, an offset committed only after the caller handled its record.

    async with subscribe(settings, "traces.valid", group="my-team") as records:
        async for record in records:
            await handle(record.value)          # record.topic/partition/offset/key/schema_version too

Three ways to position a subscription:

- ``group="G"``: a Kafka consumer group. Members of one group split the
  topic's partitions between them; the group's committed offsets say where a
  restarted member goes on (``start`` applies only to partitions the group
  never committed: ``earliest`` by default, the whole log).
- no group: this process reads every partition, from ``start`` or from
  ``since`` (the first record at or after that instant, per partition), and
  commits nothing.
- ``group="G", since=t``: first moves the group's committed offsets to the
  first record at or after ``t`` (as ``kafka-consumer-groups --reset-offsets
  --to-datetime`` does; refused while the group has active members), then
  joins it: to reprocess from an instant.
- ``dataset=manifest``: exactly the manifest's offset ranges, in (partition,
  offset) order, then the iteration ends (``kafkalog.ranges`` checks the
  ranges are all still in the log before anything is yielded).

Undecodable values (not single-object Avro, a writer schema not registered
here, a corrupt body) raise ``UndecodableRecordError`` naming
``topic[partition]@offset`` by default, and that record is not committed.
Skipping it silently would lose an event; on tracestream's own topics it
means a producer used a schema this process does not know, and the fix is to
deploy the schema and restart, which reads the record again. A reader of a
topic that carries broken input by design (``traces.raw``) passes
``on_undecodable="yield"`` and gets ``Undecodable`` items, with the original
bytes, in their place (``tracestream tail`` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from aiokafka.structs import ConsumerRecord

from consumers.handled import HandledOffsets
from consumers.records import (
    Record,
    Undecodable,
    decode_record,
    topic_name,
    undecodable,
)
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.errors import SubscriptionError, UndecodableRecordError, UnknownTopicError
from kafkalog.lag import topic_partitions
from kafkalog.ranges import read_range_batches_raw
from schemas.codec import AvroCodec
from schemas.errors import ConfigurationError
from schemas.registry import default_registry
from schemas.timeutil import to_millis

if TYPE_CHECKING:
    from dataset.manifest import Manifest

log = logging.getLogger(__name__)

StartAt = Literal["earliest", "latest"]
OnUndecodable = Literal["raise", "yield"]
Item = Record | Undecodable

_POLL_MS = 200
_MAX_RECORDS = 500
_MiB = 1 << 20


class _Rebalance(ConsumerRebalanceListener):
    """Hands partitions over cleanly: revocation is awaited by aiokafka before the group is rejoined."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.subscription._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.subscription._on_assigned(set(assigned))


class Subscription:
    """An async iterator of ``Record`` (and ``Undecodable`` when asked) for one topic.

    At-least-once: with a ``group``, a record's offset is committed only
    after the caller's loop body for it has finished, i.e. when the caller
    asks for the next record (commits are batched: at the latest every
    ``commit_interval_s`` and whenever the subscription goes to the broker
    for more), or when an ``async with`` block is left without an exception.
    If the body raises, that record is not committed and is delivered again
    to whichever member of the group reads its partition next; the records
    before it were handled and are committed when the subscription closes.
    A crash (no close at all) re-delivers what was handled since the last
    commit, so make the body idempotent or keyed by ``record.coordinates``.
    A body that runs longer than the consumer's ``max.poll.interval.ms``
    (5 minutes) makes the member leave the group, and its partitions move on.
    Leaving a bare ``async for`` early (``break``) cannot be told apart from
    a failure, so the record in hand is not committed; use ``async with``
    for the clean exit to count it as handled.

    Partitions handed to another member in a rebalance are first settled:
    records fetched but not yet handed out are dropped (the new owner reads
    them), the record in hand is waited for (up to ``handoff_timeout_s``)
    and what was handled is committed.

    A subscription is iterated once; it stops by itself only when a dataset
    is read to its end or nothing arrives for ``idle_timeout_s`` (for a group
    member, counted from its partitions' assignment: joining a group takes
    the broker's initial rebalance delay, 3 s by default).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        group: str | None = None,
        start: StartAt = "earliest",
        since: datetime | None = None,
        dataset: Manifest | None = None,
        on_undecodable: OnUndecodable = "raise",
        idle_timeout_s: float | None = None,
        commit_interval_s: float = 1.0,
        handoff_timeout_s: float = 30.0,
        kafka: KafkaClients | None = None,
        codec: AvroCodec | None = None,
    ) -> None:
        self.topic = topic_name(settings, topic)
        self.group = group
        _check_options(self.topic, group, start, since, dataset, on_undecodable)
        self._start = start
        self._since = since
        self._dataset = dataset
        self._on_undecodable = on_undecodable
        self._idle_timeout_s = idle_timeout_s
        self._commit_interval_s = commit_interval_s
        self._handoff_timeout_s = handoff_timeout_s
        self._settings = settings
        self._kafka = kafka
        self._codec = codec or AvroCodec(default_registry())
        self._consumer: AIOKafkaConsumer | None = None
        self._batches: AsyncIterator[list[ConsumerRecord]] | None = None
        self._buffer: deque[ConsumerRecord] = deque()
        self._handled = HandledOffsets()
        self._settled = asyncio.Event()
        self._settled.set()
        self._revoking: set[TopicPartition] = set()
        self._last_commit = time.monotonic()
        self._assigned_at: float | None = None
        self._started = False
        self._iterated = False
        self._exhausted = False
        self._closing: asyncio.Future | None = None

    # --- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and join the group or take a position (called by ``async with`` and the first iteration).

        Raises:
            UnknownTopicError: the topic does not exist.
            ConfigurationError: no ``kafka`` given and no Kafka bootstrap configured.
            RangeExpiredError, RangeBeyondEndError: (dataset) the ranges are no longer, or not yet, in the log.
        """
        if self._started:
            return
        self._started = True
        kafka = self._kafka or _kafka(self._settings)
        self._kafka = kafka
        partitions = await topic_partitions(kafka, [self.topic])
        if not partitions:
            raise await _unknown_topic(kafka, self.topic, self._settings.topic_prefix)
        if self._dataset is not None:
            self._batches = read_range_batches_raw(kafka, self._dataset.ranges, batch_records=_MAX_RECORDS)
            # The reader checks every range before its first batch: fail here, not mid-iteration.
            self._buffer.extend(await anext(self._batches, None) or ())
            return
        consumer = kafka.consumer(
            group_id=self.group,
            client_id=f"tracestream-subscriber-{self.group or 'groupless'}",
            enable_auto_commit=False,
            auto_offset_reset=self._start,
            isolation_level="read_committed",
            max_partition_fetch_bytes=2 * _MiB,
            retry_backoff_ms=50,
        )
        if self.group is not None:
            if self._since is not None:
                await reset_group_offsets(kafka, self.group, partitions, self._since)
            consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._consumer = consumer
        await kafka.start(consumer)
        # A group-less consumer's coordinator task must run once before stop() can cancel it cleanly.
        await asyncio.sleep(0)
        if self.group is None:
            consumer.assign(partitions)
            await self._position(consumer, partitions)

    async def _position(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Seek every partition explicitly, so records published after ``start`` returns are never skipped."""
        if self._since is not None:
            offsets = await _offsets_at(consumer, partitions, self._since)
        elif self._start == "earliest":
            offsets = await consumer.beginning_offsets(partitions)
        else:
            offsets = await consumer.end_offsets(partitions)
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)

    async def close(self, *, handled: bool = False) -> None:
        """Commit what was handled (the record in hand too when ``handled``) and leave the group.

        Safe to call more than once; later calls wait for the first.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(handled))
        await self._closing

    async def _close(self, handled: bool) -> None:
        if handled:
            self._handled.handled()
        else:
            self._handled.abandon()
        self._settled.set()
        try:
            if self._consumer is not None and self.group is not None:
                await self._commit(None)
        finally:
            if self._consumer is not None:
                await self._consumer.stop()
            if self._batches is not None:
                await self._batches.aclose()

    async def __aenter__(self) -> Subscription:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(handled=exc_type is None)

    def assignment(self) -> set[int]:
        """Partitions this subscription reads now (a group member's share; every partition without a group)."""
        if self._consumer is None:
            return set()
        return {tp.partition for tp in self._consumer.assignment()}

    # --- iteration -------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Item]:
        if self._iterated:
            raise ConfigurationError(f"the subscription to {self.topic} is already being iterated; subscribe again")
        self._iterated = True
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        try:
            await self.start()
            while True:
                # The caller asked for the next record: its body for the previous one finished.
                self._handled.handled()
                self._settled.set()
                await self._maybe_commit(force=False)
                message = await self._next_message()
                if message is None:
                    self._exhausted = True
                    return
                try:
                    item: Item = decode_record(message, self._codec)
                except UndecodableRecordError as exc:
                    if self._on_undecodable == "raise":
                        raise
                    item = undecodable(message, exc)
                if self.group is not None:
                    self._handled.hand_out(TopicPartition(message.topic, message.partition), message.offset)
                    self._settled.clear()
                yield item
        finally:
            await self.close(handled=self._exhausted)

    async def _next_message(self) -> ConsumerRecord | None:
        """The next record to hand out; None when a dataset is done or nothing came for ``idle_timeout_s``."""
        idle_since = time.monotonic()
        while not self._buffer:
            if self._batches is not None:
                batch = await anext(self._batches, None)
                if batch is None:
                    return None
                self._buffer.extend(batch)
                continue
            await self._maybe_commit(force=True)  # going to the broker: settle what was handled
            wait_ms = _POLL_MS
            if self._idle_timeout_s is not None and not self._joining():
                # A group member's quiet time counts from its (latest) assignment, not from the join's wait.
                quiet_since = max(idle_since, self._assigned_at or idle_since)
                left_s = self._idle_timeout_s - (time.monotonic() - quiet_since)
                if left_s <= 0:
                    return None
                wait_ms = max(1, min(_POLL_MS, int(left_s * 1000)))
            batches = await self._consumer.getmany(timeout_ms=wait_ms, max_records=_MAX_RECORDS)
            assigned = self._consumer.assignment()
            for tp in sorted(batches):
                if tp in assigned and tp not in self._revoking:
                    self._buffer.extend(batches[tp])
        return self._buffer.popleft()

    # --- commits and rebalances ----------------------------------------------------

    async def _maybe_commit(self, *, force: bool) -> None:
        if self.group is None or self._consumer is None or self._revoking or not len(self._handled):
            return
        if force or time.monotonic() - self._last_commit >= self._commit_interval_s:
            await self._commit(None)

    async def _commit(self, partitions: set[TopicPartition] | None) -> None:
        offsets = self._handled.take(partitions)
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            # The partitions moved to another member, which reads from the group's last commit:
            # handled records may come again (at-least-once), none is lost.
            where = ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(offsets.items()))
            log.warning("group %s could not commit %s (%s); those records will be delivered again",
                        self.group, where, exc)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoking |= revoked
        self._buffer = deque(m for m in self._buffer if TopicPartition(m.topic, m.partition) not in revoked)
        if self._handled.in_flight_on(revoked):
            try:
                await asyncio.wait_for(self._settled.wait(), self._handoff_timeout_s)
            except TimeoutError:
                log.warning("group %s: the record %s was still being handled after %.0fs; it will be delivered "
                            "again to the partition's next owner", self.group, self._handled.in_flight,
                            self._handoff_timeout_s)
        if self._consumer is not None:
            await self._commit(revoked)

    def _joining(self) -> bool:
        """A group member waiting for its first assignment, or for the one after a revocation."""
        return self.group is not None and (self._assigned_at is None or bool(self._revoking))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoking.clear()
        self._assigned_at = time.monotonic()
        log.info("group %s: assigned %s", self.group, sorted(assigned))


def subscribe(settings: Settings, topic: str, group: str | None = None, **options) -> Subscription:
    """A subscription to ``topic`` (a logical name such as ``traces.valid`` gets ``settings.topic_prefix``).

    Iterate it (``async for``), preferably inside ``async with``; see ``Subscription`` for the
    at-least-once contract and the module docstring for positioning.

    Args:
        settings: where Kafka is and the topic prefix.
        topic: logical name (``traces.raw``, ``traces.valid``, ``traces.dlq``, ``datasets.events``,
            ``runs.events``) or a full topic name.
        group: consumer group; None reads every partition and commits nothing.
        start: ``earliest`` or ``latest``: where to begin without a committed offset (or without a group).
        since: begin at the first record at or after this instant (with a group: reset the group to it first).
        dataset: (no group) read exactly this manifest's ranges, then stop.
        on_undecodable: ``raise`` (default) or ``yield`` ``Undecodable`` items.
        idle_timeout_s: stop when nothing arrives for this long; None follows the topic forever.
        commit_interval_s: most time handled records wait to be committed while records keep coming.
        handoff_timeout_s: in a rebalance, how long to wait for the record in hand before giving it up.
        kafka: the cluster (``KafkaClients``); by default the configured cluster or the running local broker.
        codec: decodes values; one on the default registry by default.

    Raises:
        ConfigurationError: options that contradict each other (``group`` with ``dataset``, ``since`` with
            ``dataset``, a dataset of another topic).
    """
    return Subscription(settings, topic, group=group, **options)


def _check_options(topic: str, group: str | None, start: str, since: datetime | None, dataset: Manifest | None,
                   on_undecodable: str) -> None:
    if start not in ("earliest", "latest"):
        raise ConfigurationError(f"start must be 'earliest' or 'latest', got {start!r}")
    if on_undecodable not in ("raise", "yield"):
        raise ConfigurationError(f"on_undecodable must be 'raise' or 'yield', got {on_undecodable!r}")
    if group is not None and not group.strip():
        raise ConfigurationError("a consumer group name must not be empty; pass group=None to read without one")
    if since is not None and since.tzinfo is None:
        raise ConfigurationError(f"since={since.isoformat()} is a naive datetime; give a timezone (e.g. UTC)")
    if group is not None and dataset is not None:
        raise ConfigurationError(
            f"dataset= replays fixed ranges without a group; group {group!r} goes on from its committed offsets. "
            "Drop group= to read the dataset"
        )
    if since is not None and dataset is not None:
        raise ConfigurationError("give since= or dataset=, not both")
    if dataset is not None and dataset.topic != topic:
        raise ConfigurationError(
            f"dataset {dataset.name}@{dataset.version} names offsets of {dataset.topic}, not {topic}; "
            f"subscribe to {dataset.topic}"
        )


async def _offsets_at(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], at: datetime
) -> dict[TopicPartition, int]:
    """Per partition, the first offset whose timestamp is at or after ``at`` (the end when none is)."""
    at_ms = to_millis(at)
    found = await consumer.offsets_for_times({tp: at_ms for tp in partitions})
    ends = await consumer.end_offsets(partitions)
    return {tp: found[tp].offset if found[tp] is not None else ends[tp] for tp in partitions}


async def reset_group_offsets(kafka: KafkaClients, group: str, partitions: list[TopicPartition], at: datetime) -> None:
    """Commit for ``group`` the first offset at or after ``at`` on every partition (``--reset-offsets --to-datetime``).

    Raises:
        SubscriptionError: the group has active members; the broker takes offsets from outside
            the group only while it is empty.
    """
    consumer = await kafka.start(kafka.consumer(group_id=group, enable_auto_commit=False,
                                                isolation_level="read_committed", retry_backoff_ms=50))
    await asyncio.sleep(0)
    try:
        consumer.assign(partitions)
        offsets = await _offsets_at(consumer, partitions, at)
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            topic = partitions[0].topic
            raise SubscriptionError(
                f"cannot move group {group!r} on {topic} to {at.isoformat()}: the broker refused the commit "
                f"({type(exc).__name__}), as it does while the group has active members; stop them first"
            ) from exc
    finally:
        await consumer.stop()


def _kafka(settings: Settings) -> KafkaClients:
    """Clients for the configured cluster: the SDK knows settings, not the local stack (pass ``kafka=``)."""
    if not settings.kafka_bootstrap:
        raise ConfigurationError(
            "no Kafka bootstrap: point TRACESTREAM_KAFKA_BOOTSTRAP at your cluster (host:port), or pass "
            "kafka=deploy.stack.kafka_clients(settings) to use the broker of `tracestream stack up`"
        )
    return KafkaClients.from_settings(settings, settings.kafka_bootstrap)


async def _unknown_topic(kafka: KafkaClients, topic: str, prefix: str) -> UnknownTopicError:
    admin = await kafka.start(kafka.admin())
    try:
        existing = sorted(t for t in await admin.list_topics() if t.startswith(prefix) and not t.startswith("__"))
    finally:
        await admin.close()
    shown = ", ".join(existing[:20]) + (" …" if len(existing) > 20 else "") if existing else "none"
    scope = f" with the prefix {prefix!r}" if prefix else ""
    return UnknownTopicError(
        f"topic {topic} does not exist on {kafka.bootstrap} (topics{scope}: {shown}); give one of them, or a logical "
        "name (traces.raw, traces.valid, traces.dlq, datasets.events, runs.events); `tracestream worker` "
        "creates tracestream's topics"
    )
