"""The producer SDK: publish traces to ``traces.raw`` as Avro single-object events.

``publish`` only enqueues (batches go out in the background) and returns the
event's delivery future, as aiokafka's ``send`` does: it resolves to the
event's ``EventMetadata`` (topic, partition, offset) once the broker
acknowledged it, or raises the event's delivery error
(``MessageSizeTooLargeError``, ``KafkaTimeoutError`` past the delivery
timeout, the broker's error). Callers that publish in bulk ignore the futures
and ``flush``: it waits for every pending delivery and returns a
``DeliveryReport``. A failed delivery is never dropped silently: it is
counted, kept with its error in the next report (unless the producer was made
with ``keep_failures=False`` because every caller awaits its futures), and
leaving ``async with TraceProducer(...)`` normally raises ``DeliveryFailed`` if
any delivery failed that no ``flush`` reported. Many callers may publish at
once (the API's requests do): their events share batches, and each awaits
only its own futures.

Throughput: events go straight into per-partition record batches (see
``TraceProducer``); one delivery future per batch is kept in a bounded queue
(``max_in_flight`` events). When a batch's future settles, its events'
futures are settled in one pass: event ``i`` of the batch is at the batch's
base offset + ``i``. Memory stays bounded and nothing awaits one event's
round trip.

Oversized events: the limit is the smaller of ``max_request_size`` (2 MiB,
above the validator's 1 MiB, so a too-large trace reaches ``traces.raw`` and
is dead-lettered with its reason) and the topic's ``max.message.bytes``, read
once on first publish and again after the client restarts. An event above it
is reported failed (its future raises) and never sent:
with the idempotent producer a batch the broker refuses leaves a gap in the
partition's sequence numbers, and the broker then refuses every later batch
of that partition (``OutOfOrderSequenceNumber``). Should that happen anyway
(config changed under us, other refusals), all those failures are reported
and the producer restarts its Kafka client before the next publish.

Bounded delivery: aiokafka's idempotent producer retries a batch forever
while no broker answers, so the producer keeps its own deadline per batch
(``delivery_timeout_s``, from ``kafka_delivery_timeout_s``, counted from the
event's ``publish``). A batch not acknowledged by then gives up the whole
client: every event it still holds is reported failed with
``KafkaTimeoutError`` (not acknowledged: it may or may not be in the log), and
the next publish starts a fresh client. A watchdog task keeps that deadline
while batches are pending, so a caller awaiting an event's future gets its
answer within the delivery timeout without calling ``flush``. Starting the
client, reading the topic's metadata and handing a batch over are bounded by
the same timeout.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import struct
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Self

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.contracts import TRACE
from schemas.errors import ConfigurationError, TracestreamError

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_SIZE = 2 * 1024 * 1024
"""Above the validator's 1 MiB event limit, so an oversized trace still reaches
``traces.raw`` and is dead-lettered there (with its reason) instead of being
refused by the client. The topic's ``max.message.bytes`` must allow it too."""
_RECORD_OVERHEAD = 128  # batch header + record framing, generously
_STALL_WARNING_S = 5.0
"""How long deliveries may wait before the producer says (once) that Kafka is not answering."""


class EventMetadata(NamedTuple):
    """Where the broker put an event: what its delivery future resolves to (cf. aiokafka's ``RecordMetadata``)."""

    topic: str
    "The topic the event was written to."
    partition: int
    "Its partition (Kafka's murmur2 of the key, round robin without one)."
    offset: int
    "Its offset in that partition: the batch's base offset + its index in the batch."


@dataclass(frozen=True)
class DeliveryFailure:
    """One event the broker did not acknowledge; ``ref`` is the caller's (e.g. a line number)."""

    key: bytes | None
    error: BaseException
    ref: object = None

    def __str__(self) -> str:
        key = self.key.decode(errors="replace") if self.key is not None else "(no key)"
        return f"{key}: {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True)
class DeliveryReport:
    """Deliveries settled since the previous report."""

    delivered: int
    failed: int
    errors: tuple[DeliveryFailure, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def raise_for_failures(self) -> None:
        if self.failed:
            raise DeliveryFailed(self)


class DeliveryFailed(TracestreamError):
    """Some events were not acknowledged by the broker; ``report`` says which and why."""

    retriable = True

    def __init__(self, report: DeliveryReport) -> None:
        self.report = report
        shown = "; ".join(str(e) for e in report.errors[:5])
        more = f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else ""
        super().__init__(
            f"{report.failed} of {report.delivered + report.failed} events were not delivered: "
            f"{shown}{more}"
        )


_MASK32 = 0xFFFFFFFF
_M = 0x5BD1E995


@functools.cache
def _words(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java ``Utils.murmur2``), as aiokafka's ``DefaultPartitioner`` uses.

    Same results as ``aiokafka.partitioner.murmur2``, about 4x faster: keyed
    events land on the partitions every Kafka client would pick.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    for k in _words(length >> 2).unpack_from(data):
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length & 3
    if rest:
        base = length - rest
        if rest == 3:
            h ^= data[base + 2] << 16
        if rest >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


_Event = tuple[bytes | None, object, asyncio.Future]
"""An event in a batch: its key, the caller's ``ref``, and its delivery future (index = offset in the batch)."""


def _fail_futures(events: list[_Event], error: BaseException) -> None:
    """Fail the delivery futures not settled yet; marked as seen, since the report has the failure too."""
    if isinstance(error, asyncio.CancelledError):  # would read as the awaiting task's own cancellation
        error = KafkaError(f"the delivery was cancelled before the broker answered ({error})")
    for _, _, future in events:
        if not future.done():
            future.set_exception(copy.copy(error))  # a copy each: raising one shares its traceback
            future.exception()  # no "exception was never retrieved" for callers that only flush


class _OpenBatch:
    """A record batch being filled for one partition: its events' (key, ref, future), and its deadline."""

    __slots__ = ("builder", "deadline", "due", "events", "timer")

    def __init__(self, builder: Any, deadline: float) -> None:
        self.builder = builder
        self.deadline = deadline  # time.monotonic() by which the broker must have acknowledged it
        self.events: list[_Event] = []
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # lingered long enough: it goes out as soon as its partition's hand-over is free


class TraceProducer:
    """Async producer of Trace events to ``settings.topics.raw``.

    >>> async with TraceProducer(settings, kafka) as producer:
    ...     delivery = await producer.publish(record)
    ...     metadata = await delivery  # EventMetadata(topic, partition, offset), or its error
    ...     await producer.publish(other)
    ...     report = await producer.flush()  # everything since the last report

    Events are appended straight into per-partition record batches (aiokafka's
    ``create_batch``/``send_batch``), partitioned by key with Kafka's murmur2
    like any Kafka client. A batch goes out when full (``max_batch_size``),
    after ``linger_ms`` once its broker acknowledged the last batch sent to
    it, or on ``flush``; batches of one partition are handed to the client
    in order, and the idempotent producer keeps them in order and free of
    duplicates on retries. This costs ~2 µs per event instead of
    ~25 µs through ``send()``, which matters because encoding is ~25 µs too.
    Publishing from many tasks at once is safe; their events share batches.

    At most about ``max_in_flight`` events are unacknowledged at a time;
    ``publish`` waits for the oldest batch beyond that. No event waits longer
    than ``delivery_timeout_s`` (default: the settings') for its acknowledgement.
    """

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaClients,
        *,
        codec: AvroCodec | None = None,
        linger_ms: int = 20,
        max_batch_size: int = 256 * 1024,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        max_in_flight: int = 10_000,
        client_id: str = "tracestream-producer",
        delivery_timeout_s: float | None = None,
        keep_failures: bool = True,
    ) -> None:
        """
        Args:
            linger_ms: how long a batch waits for more events before it goes out.
            max_in_flight: about how many unacknowledged events ``publish`` allows before it waits.
            delivery_timeout_s: how long an event may wait for its acknowledgement (default: the settings').
            keep_failures: keep each failed delivery for the next ``DeliveryReport`` (for callers that
                ``flush``). With False only their number is: for callers that await every event's
                future and never ``flush`` (the API), so failures do not pile up.
        """
        if codec is None:
            from schemas.registry import default_registry

            codec = AvroCodec(default_registry())
        self.settings = settings
        self.codec = codec
        self.topic = settings.topics.raw
        self.max_in_flight = max_in_flight
        self.max_request_size = max_request_size
        self._linger_s = linger_ms / 1000
        self.delivery_timeout_s = (
            settings.kafka_delivery_timeout_s if delivery_timeout_s is None else delivery_timeout_s
        )
        self.kafka = kafka
        self._client_config = dict(
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=max_batch_size,
            max_request_size=max_request_size,
            compression_type=None,
            # Every wait inside the client (metadata, a full partition queue) ends by the delivery timeout.
            request_timeout_ms=int(min(40.0, self.delivery_timeout_s) * 1000),
        )
        self._producer = self.kafka.producer(**self._client_config)
        self._poisoned = False
        self._partitions: list[int] | None = None
        self._message_limit = max_request_size
        self._round_robin = 0
        self._open: dict[int, _OpenBatch] = {}
        self._ready: dict[int, deque[_OpenBatch]] = defaultdict(deque)
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._unacknowledged: Counter[object] = Counter()  # batches handed over and not settled, per broker
        self._linger_tasks: set[asyncio.Task] = set()
        # Batches handed to the client: (delivery future, its events, deadline).
        self._pending: deque[tuple[asyncio.Future, list[_Event], float]] = deque()
        self._watchdog: asyncio.Task | None = None  # keeps the pending batches' deadlines
        self._restarting = asyncio.Lock()
        self._giving_up = asyncio.Lock()
        self._stall_warned = False
        self._gave_up: KafkaTimeoutError | None = None  # why the current client was given up
        self._unsettled = 0
        self._delivered = 0
        self._keep_failures = keep_failures
        self._failed: list[DeliveryFailure] = []
        self._failed_count = 0
        self._started = False

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Connect; raises ``KafkaError`` if no broker answers within the delivery timeout."""
        await self._start_client()
        self._started = True

    async def stop(self) -> DeliveryReport:
        """Wait for pending deliveries (at most the delivery timeout), close the client; the unreported deliveries' report."""
        if not self._started:
            return DeliveryReport(0, 0)
        try:
            report = await self.flush()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()  # nothing is pending after flush: it is ending anyway
                await asyncio.gather(self._watchdog, return_exceptions=True)
                self._watchdog = None
            await self._close_client()
            self._started = False
        return report

    async def _start_client(self) -> None:
        """Start the current client, bounded: with no broker, fail instead of waiting."""
        try:
            async with asyncio.timeout(self.delivery_timeout_s):
                await self.kafka.start(self._producer)  # a refused password is named, not retried
        except BaseException as exc:
            await self._close_client()
            if isinstance(exc, TimeoutError):
                raise KafkaTimeoutError(
                    f"no Kafka broker at {self.kafka.bootstrap} answered within {self.delivery_timeout_s:g} s"
                ) from exc
            raise

    async def _close_client(self, error: BaseException | None = None) -> None:
        """Stop the current client without waiting for batches nobody will acknowledge.

        With idempotence aiokafka never expires a batch and its ``stop()`` waits
        for all of them, so whatever the client still holds is failed first
        with ``error`` (normally nothing: ``flush`` settled it all).
        """
        producer = self._producer
        error = error or KafkaTimeoutError("the producer closed before the broker acknowledged")
        try:
            async with asyncio.timeout(max(5.0, self.delivery_timeout_s)):
                await _fail_held_batches(producer, error)
                await producer.stop()
        except TimeoutError:
            log.warning("the Kafka client of %s did not close in time; leaving it", self.topic)

    async def _give_up_client(self) -> None:
        """A batch passed its deadline: report every event the client still holds, and drop it.

        Its partitions' sequence numbers can no longer be trusted, so the next
        publish starts a fresh client (``_poisoned``). The watchdog and a
        ``flush`` may both find the deadline passed: the second finds it done.
        """
        async with self._giving_up:
            now = time.monotonic()
            if any(d <= now and not f.done() for f, _, d in self._pending):
                await self._give_up_client_now()

    async def _give_up_client_now(self) -> None:
        log.error(
            "Kafka at %s did not acknowledge within the delivery timeout (%g s); "
            "giving up on every event not acknowledged yet", self.kafka.bootstrap, self.delivery_timeout_s,
        )
        error = KafkaTimeoutError(f"not acknowledged within the delivery timeout ({self.delivery_timeout_s:g} s)")
        self._poisoned = True
        self._gave_up = error
        await self._close_client(error)  # also lets the delivery futures see their outcome
        self._settle_done(abandon=error)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        report = await self.stop()
        if exc_type is None:
            report.raise_for_failures()
        elif report.failed:
            log.error("while leaving on %s: %s", exc_type.__name__, DeliveryFailed(report))

    # --- publishing -----------------------------------------------------------

    def encode(self, record: dict, *, schema_version: int | None = None) -> bytes:
        """The Avro single-object bytes of ``record`` (raises ``schemas.errors.EncodeError``)."""
        return self.codec.encode(record, TRACE, schema_version)

    async def publish(self, record: dict, *, schema_version: int | None = None) -> asyncio.Future:
        """Encode ``record`` (latest Trace version when None) and enqueue it, keyed by trace_id.

        Returns once the event is in a batch, with its delivery future (see
        ``publish_bytes``); ``flush`` reports its delivery too.
        Raises ``schemas.errors.EncodeError`` if the record does not fit the schema.
        """
        payload = self.codec.encode(record, TRACE, schema_version)
        return await self.publish_bytes(payload, record["trace_id"].encode())

    async def publish_bytes(self, payload: bytes, key: bytes | None, *, ref: object = None) -> asyncio.Future:
        """Enqueue raw message bytes as they are (dead-letter tests, replays, other encoders).

        Returns the event's delivery future: it resolves to the event's
        ``EventMetadata`` once the broker acknowledged it, or raises its
        delivery error, at the latest after the delivery timeout. Awaiting it
        is optional (``flush`` reports the same outcome); cancelling it
        changes nothing about the delivery.

        ``ref`` comes back in this event's ``DeliveryFailure`` if it fails
        (``tracestream publish`` passes the line number).

        An event bigger than the topic accepts (the smaller of
        ``max_request_size`` and the topic's ``max.message.bytes``, read on
        first use) is counted as a failed delivery and never sent: its future
        raises ``MessageSizeTooLargeError``. If the client cannot take a
        batch (broker unreachable past its request timeout, producer closed),
        the batch's events are counted as failed and the error is raised; so
        is the error when a fresh client cannot start (no broker). When this
        raises, this event was not enqueued (nor counted).
        """
        if self._poisoned:
            async with self._restarting:  # concurrent publishers restart it once
                if self._poisoned:
                    await self._restart_client()
        partitions = self._partitions or await self._load_topic()
        if key is None:
            partition = partitions[self._round_robin % len(partitions)]
            self._round_robin += 1
        else:
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        if len(payload) + len(key or b"") + _RECORD_OVERHEAD > self._message_limit:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, payload, [])
            if size > self._message_limit:
                refused = asyncio.get_running_loop().create_future()
                self._unsettled += 1
                self._fail([(key, ref, refused)], MessageSizeTooLargeError(
                    f"the event is {size:,} bytes as a record batch; {self.topic} takes at "
                    f"most {self._message_limit:,} (the smaller of the producer's "
                    f"max_request_size and the topic's max.message.bytes)"
                ))
                return refused
        delivery = asyncio.get_running_loop().create_future()
        batch = self._open.get(partition) or self._open_batch(partition)
        while batch.builder.append(timestamp=None, key=key, value=payload) is None:
            # Full: hand it over, then try the partition's next batch. Other publishers may have
            # opened and filled that one while this one waited in the hand-over, so the append is
            # tried until it takes (a fresh batch always takes one event); taking its answer on
            # trust once lost the event while its future still reported it delivered. If the
            # client refused a batch, raise before this event is enqueued, so a caller that stops
            # here knows exactly which events were taken.
            self._detach(partition)
            error = await self._drain(partition)
            if error is not None:
                raise error
            batch = self._open.get(partition) or self._open_batch(partition)
        batch.events.append((key, ref, delivery))
        self._unsettled += 1
        if self._unsettled > self.max_in_flight and self._pending:
            await self._wait_for([self._pending[0][0]])
        return delivery

    async def _load_topic(self) -> list[int]:
        """The topic's partitions, and the largest event it accepts (within the delivery timeout)."""
        try:
            async with asyncio.timeout(self.delivery_timeout_s):
                partitions = sorted(await self._producer.partitions_for(self.topic))
                if not partitions:
                    raise ConfigurationError(f"topic {self.topic} has no partitions")
                topic_limit = await _topic_max_message_bytes(self.kafka, self.topic)
        except TimeoutError as exc:
            raise KafkaTimeoutError(
                f"Kafka at {self.kafka.bootstrap} did not describe {self.topic} within {self.delivery_timeout_s:g} s"
            ) from exc
        if topic_limit is not None:
            self._message_limit = min(self.max_request_size, topic_limit)
        self._partitions = partitions
        return partitions

    async def _restart_client(self) -> None:
        """Replace the Kafka client after a batch failed for good.

        The idempotent producer numbers batches per partition; a refused batch
        leaves a gap, and the broker then refuses every later batch of that
        partition (OutOfOrderSequenceNumber) for as long as the producer id
        lives. Everything in flight is settled (and reported) first.
        """
        if self._gave_up is None:
            log.warning(
                "a batch to %s failed for good; restarting the Kafka client so later events "
                "get a fresh producer id", self.topic,
            )
        await self._deliver_all()
        await self._close_client()
        self._producer = self.kafka.producer(**self._client_config)
        await self._start_client()
        self._poisoned = False
        self._gave_up = None
        self._partitions = None  # read the topic again: its max.message.bytes may be why a batch was refused

    def _open_batch(self, partition: int) -> _OpenBatch:
        batch = _OpenBatch(self._producer.create_batch(), time.monotonic() + self.delivery_timeout_s)
        batch.timer = asyncio.get_running_loop().call_later(
            self._linger_s, self._linger_expired, partition, batch
        )
        self._open[partition] = batch
        return batch

    def _detach(self, partition: int) -> None:
        """Move the open batch of ``partition`` to its ready queue (order = hand-over order)."""
        batch = self._open.pop(partition)
        if batch.timer is not None:
            batch.timer.cancel()
        batch.builder.close()  # no more appends, and the client must not linger it again
        self._ready[partition].append(batch)

    def _linger_expired(self, partition: int, batch: _OpenBatch) -> None:
        if self._open.get(partition) is not batch:
            return
        batch.due = True
        self._send_due(partition)

    def _leader(self, partition: int) -> object:
        """The broker leading ``partition`` (the partition itself while the client does not know it)."""
        leader = self._producer.client.cluster.leader_for_partition(TopicPartition(self.topic, partition))
        return leader if leader is not None and leader >= 0 else ("partition", partition)

    def _send_due(self, partition: int) -> None:
        """Hand over the partition's lingered batch, unless a batch sent to its broker is unacknowledged.

        While one is, the batch keeps filling, and it goes out with the other
        partitions' as soon as that one is acknowledged. The client sends one
        produce request per broker at a time anyway; a batch handed over
        earlier would wait a round trip in the client's queue, and the events
        arriving meanwhile would form a batch of their own behind it. So each
        round trip carries everything since the last. (Full batches do not wait.)
        """
        batch = self._open.get(partition)
        if batch is None or not batch.due or self._locks[partition].locked() \
                or self._unacknowledged[self._leader(partition)]:
            return
        self._detach(partition)
        task = asyncio.get_running_loop().create_task(self._drain(partition))
        self._linger_tasks.add(task)
        task.add_done_callback(self._linger_tasks.discard)

    async def _drain(self, partition: int) -> BaseException | None:
        """Hand the ready batches of ``partition`` to the client, oldest first, then its open one if due.

        A batch the client refuses, or cannot take before the batch's
        deadline, counts as failed for all its events; the last such error is
        returned. After the producer gave up on its client, every ready batch
        fails with that reason at once.
        """
        error = None
        async with self._locks[partition]:
            ready = self._ready[partition]
            while ready or (partition in self._open and self._open[partition].due):
                if not ready:
                    self._detach(partition)  # it lingered while this drain waited for the client
                batch = ready[0]
                if self._gave_up is not None:
                    ready.popleft()
                    self._fail(batch.events, self._gave_up)
                    error = self._gave_up
                    continue
                try:
                    remaining = batch.deadline - time.monotonic()
                    if remaining <= 0:
                        raise KafkaTimeoutError(
                            f"not handed to Kafka within the delivery timeout ({self.delivery_timeout_s:g} s)"
                        )
                    try:
                        async with asyncio.timeout(remaining):
                            future = await self._producer.send_batch(
                                batch.builder, self.topic, partition=partition
                            )
                    except TimeoutError as exc:
                        raise KafkaTimeoutError(
                            f"not handed to Kafka within the delivery timeout ({self.delivery_timeout_s:g} s)"
                        ) from exc
                except KafkaError as exc:
                    ready.popleft()
                    self._fail(batch.events, exc)
                    error = exc
                    continue
                ready.popleft()
                self._pending.append((future, batch.events, batch.deadline))
                leader = self._leader(partition)
                self._unacknowledged[leader] += 1
                future.add_done_callback(functools.partial(self._batch_settled, partition, leader, batch.events))
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.get_running_loop().create_task(self._keep_deadlines())
        self._settle_done()
        return error

    def _batch_settled(self, partition: int, leader: object, events: list[_Event], future: asyncio.Future) -> None:
        """Settle a batch's events' futures at once (event ``i`` is at the base offset + ``i``), then count.

        Then the lingered batches that waited for this broker go out.
        """
        self._unacknowledged[leader] -= 1
        if not future.cancelled():  # cancelled: abandoned, and _settle_done failed its events
            error = future.exception()
            if error is None:
                base = future.result().offset
                topic = self.topic
                for i, (_, _, delivery) in enumerate(events):
                    if not delivery.done():  # a caller may have cancelled its wait
                        delivery.set_result(EventMetadata(topic, partition, base + i))
            else:
                _fail_futures(events, error)
        self._settle_done()
        if not self._unacknowledged[leader]:
            for other in list(self._open):
                self._send_due(other)

    async def _keep_deadlines(self) -> None:
        """While batches are pending, give up the client when one passes its deadline (``_wait_for``)."""
        try:
            while self._pending:
                await self._wait_for([f for f, _, _ in self._pending])
        except KafkaError as exc:  # closing the given-up client failed; its events were failed all the same
            log.error("giving up the Kafka client of %s: %s", self.topic, exc)

    def _fail(self, events: list[_Event], error: BaseException) -> None:
        self._unsettled -= len(events)
        self._failed_count += len(events)
        if self._keep_failures:
            self._failed.extend(DeliveryFailure(key, error, ref) for key, ref, _ in events)
        _fail_futures(events, error)

    def _settle_done(self, abandon: BaseException | None = None) -> None:
        """Count the delivered/failed batches at the head of the queue (all of them with ``abandon``).

        Only a delivery future that succeeded counts as delivered; one still
        open when the client is abandoned is failed with ``abandon``.
        """
        pending = self._pending
        while pending and (abandon is not None or pending[0][0].done()):
            future, events, _ = pending.popleft()
            if not future.done():
                future.cancel()  # our shield of aiokafka's batch future; the batch was failed already
                self._fail(events, abandon)
                continue
            if future.cancelled():
                self._fail(events, asyncio.CancelledError("delivery cancelled"))
                continue
            error = future.exception()
            if error is None:
                self._unsettled -= len(events)
                self._delivered += len(events)
                self._stall_warned = False
            else:
                self._fail(events, error)
                if not getattr(error, "retriable", False):
                    self._poisoned = True

    async def _wait_for(self, futures: list[asyncio.Future]) -> None:
        """Wait until ``futures`` (pending deliveries) are done, never past a pending batch's deadline.

        The first missed deadline gives up the client (``_give_up_client``),
        which settles everything it held. Says once when Kafka stops answering.
        """
        started = time.monotonic()
        while waiting := [f for f in futures if not f.done()]:
            now = time.monotonic()
            deadline = min((d for f, _, d in self._pending if not f.done()), default=now)
            if deadline <= now:
                await self._give_up_client()
                return
            if not self._stall_warned and now - started >= _STALL_WARNING_S:
                self._stall_warned = True
                log.warning(
                    "Kafka at %s has not acknowledged %d events for %.0f s; retrying until the "
                    "delivery timeout (%g s)", self.kafka.bootstrap, self._unsettled, now - started,
                    self.delivery_timeout_s,
                )
            await asyncio.wait(waiting, timeout=min(deadline - now, _STALL_WARNING_S))
        self._settle_done()

    @property
    def in_flight(self) -> int:
        """Events enqueued whose delivery has not been counted yet."""
        return self._unsettled

    async def flush(self) -> DeliveryReport:
        """Send everything buffered, wait for every delivery (at most the delivery timeout); report and reset the counts."""
        await self._deliver_all()
        report = DeliveryReport(self._delivered, self._failed_count, tuple(self._failed))
        self._delivered = 0
        self._failed = []
        self._failed_count = 0
        return report

    async def _deliver_all(self) -> None:
        for partition in list(self._open):
            self._detach(partition)
        for partition in list(self._ready):
            await self._drain(partition)
        if self._linger_tasks:
            await asyncio.gather(*self._linger_tasks, return_exceptions=True)
        if self._pending:
            await self._wait_for([f for f, _, _ in self._pending])


async def _fail_held_batches(producer: AIOKafkaProducer, error: BaseException) -> None:
    """Stop the sender and fail every batch the producer still holds, so that its ``stop()`` returns.

    Reaches into aiokafka 0.14 (the version is pinned): there is no public way
    to drop batches, and with idempotence it never expires them. The sender
    goes first: its requests in flight end, and their batches come back to the
    queue (or are settled), so nothing is failed under a request.
    """
    if producer._sender is not None:
        await producer._sender.close()
    accumulator = producer._message_accumulator
    held = [batch for queue in accumulator._batches.values() for batch in queue]
    accumulator._batches.clear()  # never sent now
    # A retried batch's done-callback removes it from _pending_batches; let it find it there.
    accumulator._pending_batches.update(held)
    for batch in list(accumulator._pending_batches):
        batch.failure(exception=error)
        waiter = batch._drain_waiter
        if waiter.done() and not waiter.cancelled():
            waiter.exception()  # seen: no "exception was never retrieved" noise


async def _topic_max_message_bytes(kafka: KafkaClients, topic: str) -> int | None:
    """The topic's ``max.message.bytes``, or None if the cluster will not say."""
    admin = kafka.admin()
    try:
        await admin.start()
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
        )
        for _, _, _, name, entries in response.resources:
            if name == topic:
                for entry in entries:
                    if entry[0] == "max.message.bytes":
                        return int(entry[1])
    except (KafkaError, ValueError, TypeError) as exc:
        log.warning("cannot read max.message.bytes of %s (%s); using max_request_size", topic, exc)
    finally:
        try:
            await admin.close()
        except Exception as exc:  # noqa: BLE001 - closing must not hide the answer
            log.debug("closing the admin client: %s", exc)
    return None


__all__ = [
    "DEFAULT_MAX_REQUEST_SIZE",
    "DeliveryFailed",
    "DeliveryFailure",
    "DeliveryReport",
    "EventMetadata",
    "TraceProducer",
    "murmur2",
]
