"""Create a dataset: fix its offset ranges, wait for the warehouse, hash it by replay, announce it.

Every refusal (duplicate name+version, malformed or out-of-range offsets, an
expired range, an unknown parent) happens before anything is published. Then
`created` is published, the snapshot waits until the materializer has
committed every offset below the ends (so both read paths hold every record),
replays the ranges from Kafka to count and hash them, and publishes `ready`,
or `failed` if the wait times out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dataset.catalog import load_catalog
from dataset.errors import DatasetExists, SnapshotTimeout, UnknownDataset
from dataset.events import DatasetEvent
from dataset.filter import TraceFilter
from dataset.formats import FORMATS
from dataset.manifest import DatasetRef, Manifest
from dataset.ranges import OffsetRange, plan_ranges
from dataset.reader import DatasetRead, replay
from dataset.split import Split
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.errors import RangeBeyondEndError, RangeExpiredError
from kafkalog.groups import materialize_group
from kafkalog.lag import ClusterOffsets
from schemas.codec import AvroCodec
from schemas.contracts import DATASET_EVENT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetRequest:
    """What `tracestream dataset create` asks for."""

    name: str
    version: int | None = None
    filter: TraceFilter = TraceFilter()
    split: Split = Split()
    from_offsets: tuple[OffsetRange, ...] | None = None
    """Explicit ranges; otherwise everything from the log start (or from ``since``) to the high watermark."""
    since: DatasetRef | None = None
    """Incremental: start where this dataset ended (its version may be 0 for "latest ready")."""


async def create_dataset(
    settings: Settings,
    kafka: KafkaClients,
    request: DatasetRequest,
    codec: AvroCodec,
    *,
    wait_timeout_s: float = 120,
    warn: Callable[[str], None] = log.warning,
) -> Manifest:
    """Snapshot, wait, hash and announce a dataset; returns the ready manifest.

    Raises:
        DatasetExists: name+version was announced before.
        UnknownDataset: ``since`` names no ready dataset.
        RangeBeyondEndError / RangeExpiredError: the offsets are not (or no longer) in the log.
        SnapshotTimeout: the materializer did not catch up in time (a `failed` event is published).
    """
    async with ClusterOffsets(kafka) as offsets:  # one admin client and consumer for the whole snapshot
        return await _create(settings, kafka, offsets, request, codec, wait_timeout_s, warn)


async def _create(
    settings: Settings, kafka: KafkaClients, offsets: ClusterOffsets, request: DatasetRequest, codec: AvroCodec,
    wait_timeout_s: float, warn: Callable[[str], None],
) -> Manifest:
    topic = settings.topics.valid
    catalog = await load_catalog(kafka, settings.topics.datasets, codec)
    version = request.version or catalog.next_version(request.name)
    if catalog.exists(DatasetRef(request.name, version)):
        raise DatasetExists(
            f"dataset {request.name}@{version} already exists; pick another --version "
            f"(next free: {catalog.next_version(request.name)}) or another name"
        )
    parent = catalog.get(request.since.name, request.since.version or None).manifest if request.since else None
    ranges = await _decide_ranges(offsets, topic, request.from_offsets, parent)
    await _warn_if_retention_expires(offsets, topic, warn)
    manifest = Manifest(
        name=request.name, version=version, topic=topic, ranges=ranges, filter=request.filter,
        split=request.split, parent=parent.ref if parent else None, created_at=_now(), record_count=0,
        train_count=0, eval_count=0, content_sha256="", formats=FORMATS,
    )
    async with _Announcer(kafka, settings.topics.datasets, codec) as announce:
        await announce("created", manifest)
        try:
            await _wait_materialized(offsets, materialize_group(settings), ranges, wait_timeout_s)
        except SnapshotTimeout as exc:
            await announce("failed", manifest, error=str(exc))
            raise
        manifest = await _count_and_hash(kafka, manifest, codec)
        await announce("ready", manifest)
    return manifest


async def _decide_ranges(
    offsets: ClusterOffsets, topic: str, from_offsets: tuple[OffsetRange, ...] | None, parent: Manifest | None
) -> tuple[OffsetRange, ...]:
    partitions = await offsets.topic_partitions([topic])
    consumer = await offsets.consumer()
    starts, ends = await consumer.beginning_offsets(partitions), await consumer.end_offsets(partitions)
    if from_offsets is not None:
        ranges = tuple(sorted(from_offsets, key=lambda r: r.partition))
        known = {tp.partition for tp in partitions}
        for r in ranges:
            if r.partition not in known:
                raise RangeBeyondEndError(f"{topic} has no partition {r.partition} (it has {sorted(known)})")
    else:
        ranges = plan_ranges(
            topic, {tp.partition: ends[tp] for tp in partitions}, parent=parent,
            starts={tp.partition: starts[tp] for tp in partitions},
        )
    for r in ranges:
        tp = TopicPartition(topic, r.partition)
        if r.end > ends[tp]:
            raise RangeBeyondEndError(
                f"{r} ends past the high watermark {ends[tp]} of {topic}[{r.partition}]; "
                "a dataset can only name offsets that exist"
            )
        if r.start < starts[tp] and r.end > r.start:
            raise RangeExpiredError(
                f"{r}: offsets [{r.start}, {starts[tp]}) of {topic}[{r.partition}] were deleted by retention; "
                "pick ranges that start at or after the log start offset"
            )
    return ranges


async def _warn_if_retention_expires(offsets: ClusterOffsets, topic: str, warn: Callable[[str], None]) -> None:
    admin = await offsets.admin()
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {})])
    configs = {entry[0]: entry[1] for resource in response.resources for entry in resource[4]}
    retention_ms = int(configs.get("retention.ms") or -1)
    if retention_ms >= 0:
        warn(
            f"{topic} has retention.ms={retention_ms} ({retention_ms / 86_400_000:.1f} days): this dataset's "
            "ranges will expire from the log and then cannot be replayed. Set retention.ms=-1 on the topic."
        )


async def _wait_materialized(
    offsets: ClusterOffsets, group: str, ranges: tuple[OffsetRange, ...], timeout_s: float
) -> None:
    targets = {TopicPartition(r.topic, r.partition): r.end for r in ranges if r.end > r.start}
    deadline = time.monotonic() + timeout_s
    while True:
        committed = await offsets.committed(group)
        behind = {tp: end for tp, end in targets.items() if committed.get(tp, 0) < end}
        if not behind:
            return
        if time.monotonic() > deadline:
            detail = ", ".join(f"{tp.topic}[{tp.partition}] at {committed.get(tp, 0)} of {end}"
                               for tp, end in sorted(behind.items()))
            raise SnapshotTimeout(
                f"the materializer ({group}) has not committed the dataset's offsets after {timeout_s:.0f}s: "
                f"{detail}. Is `tracestream worker` running? Nothing was marked ready; retry once it has caught up."
            )
        await asyncio.sleep(0.25)


async def _count_and_hash(kafka: KafkaClients, manifest: Manifest, codec: AvroCodec) -> Manifest:
    read = DatasetRead(manifest)
    async for _ in replay(read, kafka, codec):  # the dataset reader counts and hashes as it selects
        pass
    return read.counted()


class _Announcer:
    """Publishes DatasetEvents keyed by dataset name, waiting for each to be acknowledged."""

    def __init__(self, kafka: KafkaClients, topic: str, codec: AvroCodec) -> None:
        self.kafka = kafka
        self.topic = topic
        self.codec = codec
        self.producer = kafka.producer(acks="all", enable_idempotence=True)

    async def __aenter__(self) -> _Announcer:
        await self.kafka.start(self.producer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def __call__(self, event_type: str, manifest: Manifest, *, error: str | None = None) -> None:
        event = DatasetEvent(event_type, manifest, _now(), error).to_avro()  # type: ignore[arg-type]
        await self.producer.send_and_wait(self.topic, self.codec.encode(event, DATASET_EVENT), key=manifest.name.encode())


def _now() -> datetime:
    return datetime.now(timezone.utc)


__all__ = ["DatasetRequest", "UnknownDataset", "create_dataset"]
