"""The materialize stage: decoded events become warehouse rows, written with retry.

A batch is written whole or retried; nothing here commits Kafka offsets. The
stage runner commits a batch only after ``MaterializeStage.process`` returns,
so an offset is committed only once its row is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.codec import AvroCodec
from schemas.contracts import DATASET_EVENT, DEAD_LETTER, MODEL_EVENT, RUN_EVENT, TRACE
from schemas.errors import DecodeError
from schemas.registry import RegisteredSchema
from schemas.timeutil import iso_millis, utc_now
from schemas.trace_fields import TRACE_FIELD_COLUMNS
from streams.coordinates import Coordinates, source_headers
from streams.stage import Batches, Outputs
from streams.validate import WRITER_VERSION_HEADER, Rejected, dead_letter
from warehouse.client import Warehouse
from warehouse.errors import (
    WarehouseRejected,
    WarehouseSchemaMismatch,
    WarehouseUnavailable,
)
from warehouse.executor import WarehouseThread
from warehouse.tables import column_names

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One consumed Kafka record, as the materializer needs it."""

    at: Coordinates
    key: bytes | None
    value: bytes
    writer_version: int | None = None


@dataclass
class Batch:
    """Column-oriented rows for one table, plus the events that could not become rows."""

    table: str
    columns: list[list[Any]]
    events: list[InboundEvent] = field(default_factory=list)
    """The events behind the rows, row for row."""
    rejected: list[Rejected] = field(default_factory=list)
    """Events that could not become rows, as dead letters."""

    def __len__(self) -> int:
        return len(self.events)

    @property
    def span(self) -> str:
        return f"{self.events[0].at}..{self.events[-1].at}" if self.events else "(empty)"

    @property
    def coordinates(self) -> str:
        """Each partition's first and last offset in the batch, as topic[partition]@first..last."""
        ranges: dict[tuple[str, int], list[int]] = {}
        for event in self.events:
            ranges.setdefault((event.at.topic, event.at.partition), []).append(event.at.offset)
        return ", ".join(f"{topic}[{partition}]@{min(offsets)}..{max(offsets)}"
                         for (topic, partition), offsets in sorted(ranges.items())) or "(empty)"


def _empty(table: str) -> list[list[Any]]:
    return [[] for _ in column_names(table)]


def trace_rows(events: Sequence[InboundEvent], codec: AvroCodec, now: datetime) -> Batch:
    """Decode traces.valid events into `traces` columns (as ``schemas.trace_fields`` maps them); undecodable
    ones become dead letters."""
    batch = Batch("traces", _empty("traces"))
    columns = dict(zip(column_names("traces"), batch.columns))
    from_record = [(columns[column.name], column.value) for column in TRACE_FIELD_COLUMNS]
    schema_version, topic, partition, offset, ingested_at = (
        columns[name] for name in ("schema_version", "topic", "partition", "offset", "ingested_at"))
    for event, record, writer in _decoded(events, codec, TRACE, batch):
        for column, value in from_record:
            column.append(value(record))
        schema_version.append(event.writer_version or writer.version)
        topic.append(event.at.topic)
        partition.append(event.at.partition)
        offset.append(event.at.offset)
        ingested_at.append(now)
        batch.events.append(event)
    return batch


def dead_letter_rows(events: Sequence[InboundEvent], codec: AvroCodec, now: datetime) -> Batch:
    """Decode traces.dlq events into `dlq` columns.

    A dead letter that cannot be decoded is still kept, as a row whose reason
    says so: the dead-letter table must account for every event on its topic.
    """
    batch = Batch("dlq", _empty("dlq"))
    cols = dict(zip(column_names("dlq"), batch.columns))
    for event in events:
        try:
            record, _ = codec.decode_latest(event.value, DEAD_LETTER)
        except DecodeError as exc:
            record = {
                "trace_id": None, "reason": exc.reason, "message": f"{event.at}: {exc}", "stage": "materialize",
                "source_topic": event.at.topic, "source_partition": event.at.partition,
                "source_offset": event.at.offset, "original": event.value, "failed_at": now,
            }
        _append_row(cols, record, event, now)
        batch.events.append(event)
    return batch


def dataset_event_rows(events: Sequence[InboundEvent], codec: AvroCodec, now: datetime) -> Batch:
    """Decode datasets.events into `datasets` rows; the manifest is kept whole as canonical JSON."""
    batch = Batch("datasets", _empty("datasets"))
    cols = dict(zip(column_names("datasets"), batch.columns))
    for event, record, _ in _decoded(events, codec, DATASET_EVENT, batch):
        manifest = record["manifest"]
        values = {
            **record, **{name: manifest[name] for name in
                         ("name", "version", "record_count", "train_count", "eval_count", "content_sha256")},
            "manifest": json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=_json_value),
        }
        _append_row(cols, values, event, now)
        batch.events.append(event)
    return batch


def run_event_rows(events: Sequence[InboundEvent], codec: AvroCodec, now: datetime) -> tuple[Batch, Batch]:
    """Decode runs.events into `runs` rows (every event) and `run_metrics` rows (metrics events)."""
    runs, metrics = Batch("runs", _empty("runs")), Batch("run_metrics", _empty("run_metrics"))
    run_cols = dict(zip(column_names("runs"), runs.columns))
    metric_cols = dict(zip(column_names("run_metrics"), metrics.columns))
    for event, record, _ in _decoded(events, codec, RUN_EVENT, runs):
        checkpoint = record.get("checkpoint") or {}
        values = {**record, "checkpoint_step": checkpoint.get("step"), "checkpoint_path": checkpoint.get("path"),
                  "checkpoint_sha256": checkpoint.get("sha256")}
        _append_row(run_cols, values, event, now)
        runs.events.append(event)
        if record.get("metrics"):
            _append_row(metric_cols, {**record["metrics"], "run_id": record["run_id"], "at": record["at"]}, event, now)
            metrics.events.append(event)
    return runs, metrics


def model_event_rows(events: Sequence[InboundEvent], codec: AvroCodec, now: datetime) -> Batch:
    """Decode models.events into `models` rows, each event kept whole as canonical JSON."""
    batch = Batch("models", _empty("models"))
    cols = dict(zip(column_names("models"), batch.columns))
    for event, record, _ in _decoded(events, codec, MODEL_EVENT, batch):
        values = {**record, "event": json.dumps(record, sort_keys=True, separators=(",", ":"), default=_json_value)}
        _append_row(cols, values, event, now)
        batch.events.append(event)
    return batch


def _append_row(columns: dict[str, list[Any]], values: dict[str, Any], event: InboundEvent, now: datetime) -> None:
    """One row: the event's Kafka coordinates plus ``values`` for every other column (a missing one is a bug)."""
    coordinates = {"topic": event.at.topic, "partition": event.at.partition, "offset": event.at.offset,
                   "ingested_at": now}
    for name, column in columns.items():
        column.append(coordinates[name] if name in coordinates else values[name])


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_millis(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decoded(
    events: Sequence[InboundEvent], codec: AvroCodec, name: str, batch: Batch
) -> Iterator[tuple[InboundEvent, dict, RegisteredSchema]]:
    """Each event decoded as ``name``; one that cannot be decoded becomes a dead letter of ``batch``."""
    for event in events:
        try:
            record, writer = codec.decode_latest(event.value, name)
        except DecodeError as exc:
            batch.rejected.append(_materialize_dead_letter(codec, event, exc.reason, str(exc)))
            continue
        yield event, record, writer


def _materialize_dead_letter(codec: AvroCodec, event: InboundEvent, reason: str, message: str) -> Rejected:
    trace_id = event.key.decode(errors="replace") if event.key else None
    return dead_letter(codec, event.value, reason=reason, message=message, stage="materialize",
                       at=event.at, trace_id=trace_id)


class MaterializeStage:
    """traces.valid → `traces` and traces.dlq → `dlq`; returns only once the rows are durable."""

    name = "materialize"
    needs_prepare = False  # rows are keyed by their coordinates: nothing to take back after a failure

    def __init__(
        self, writer: BatchWriter, producer: Outputs, codec: AvroCodec, *, valid: str, dlq: str, datasets: str,
        runs: str, models: str,
    ) -> None:
        self.writer = writer
        self.producer = producer
        self.codec = codec
        self.topics = (valid, dlq, datasets, runs, models)
        self.valid, self.dlq, self.datasets, self.runs, self.models = valid, dlq, datasets, runs, models
        self.traces_written = 0
        self.dead_letters_written = 0

    async def on_assigned(self, partitions: set[TopicPartition], consumer: AIOKafkaConsumer) -> bool:
        """Nothing to prepare: rows are keyed by their coordinates, so a re-read batch replaces itself."""
        return False

    async def close(self) -> None:
        """The writer and producer are the worker's; nothing of the stage's own to release."""

    async def process(self, batches: Batches, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        records = [record for tp in sorted(batches) for record in batches[tp]]
        if records:
            await self._materialize(records)
        return offsets

    async def _materialize(self, records: Sequence[ConsumerRecord]) -> None:
        now = utc_now()
        traces = [_inbound(r) for r in records if r.topic == self.valid]
        dead = [_inbound(r) for r in records if r.topic == self.dlq]
        datasets = [_inbound(r) for r in records if r.topic == self.datasets]
        runs = [_inbound(r) for r in records if r.topic == self.runs]
        models = [_inbound(r) for r in records if r.topic == self.models]
        rejected: list[Rejected] = []
        if traces:
            batch = trace_rows(traces, self.codec, now)
            refused = await self.writer.write(batch)
            self.traces_written += len(batch) - len(refused)
            rejected += [*batch.rejected, *refused]
            await self.writer.index_traces(self.valid, traces)
        if datasets:
            batch = dataset_event_rows(datasets, self.codec, now)
            rejected += [*batch.rejected, *await self.writer.write(batch)]
        if runs:
            run_batch, metric_batch = run_event_rows(runs, self.codec, now)
            # Loss points first: a reader that sees a metrics event in `runs` then finds its numbers.
            metrics_refused = await self.writer.write(metric_batch)
            rejected += [*run_batch.rejected, *await self.writer.write(run_batch), *metrics_refused]
        if models:
            batch = model_event_rows(models, self.codec, now)
            rejected += [*batch.rejected, *await self.writer.write(batch)]
        if dead:
            batch = dead_letter_rows(dead, self.codec, now)
            refused = await self.writer.write(batch)
            for letter in refused:  # not expected: every dlq column is a plain string or number
                log.error("the warehouse refused the dead letter at %s; it stays in the log only", letter.at)
            self.dead_letters_written += len(batch) - len(refused)
        deliveries = [
            await self.producer.send(self.dlq, letter.payload, key=letter.key,
                                     headers=source_headers(letter.at))
            for letter in rejected
        ]
        await asyncio.gather(*deliveries)


def _inbound(record: ConsumerRecord) -> InboundEvent:
    writer_version = None
    for name, value in record.headers or ():
        if name == WRITER_VERSION_HEADER:
            writer_version = int(value)
    return InboundEvent(
        at=Coordinates(record.topic, record.partition, record.offset),
        key=record.key,
        value=record.value or b"",
        writer_version=writer_version,
    )


class BatchWriter:
    """Writes batches to the warehouse on one thread, waiting out outages.

    While the warehouse is unavailable it retries with capped backoff forever:
    events are never dropped or dead-lettered because ClickHouse is down.
    If the warehouse refuses a batch for what it holds, rows are retried one by
    one and only those it refuses become dead letters; if it refuses it because
    the table is not what this version writes, nothing is dead-lettered: the
    write raises WarehouseSchemaMismatch, which stops the stage.
    """

    def __init__(
        self,
        warehouse_factory: Callable[[], Warehouse],
        codec: AvroCodec,
        *,
        retry_max_seconds: float,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._thread = WarehouseThread(warehouse_factory)
        self._codec = codec
        self._retry_max_seconds = retry_max_seconds
        self._sleep = sleep
        self.rows_written = 0
        self.outage_retries = 0

    async def run(self, fn: Callable[[Warehouse], Any]) -> Any:
        """Run ``fn(warehouse)`` on the warehouse thread (opening the warehouse on first use)."""
        return await self._thread.run(fn)

    async def write(self, batch: Batch) -> list[Rejected]:
        """Make the batch durable; returns the rows the warehouse refused, as dead letters."""
        if not batch:
            return []
        try:
            await self._with_retry(batch.span, lambda w: w.insert(batch.table, batch.columns))
        except WarehouseRejected as exc:
            await self._stop_if_schema_differs(batch, exc)
            log.warning("warehouse refused a batch of %d rows (%s): %s; retrying row by row",
                        len(batch), batch.span, exc)
            return await self._write_rows_one_by_one(batch)
        except (TypeError, ValueError, AttributeError) as exc:  # the client could not serialize a column
            await self._stop_if_schema_differs(batch, exc)
            raise
        self.rows_written += len(batch)
        return []

    async def _stop_if_schema_differs(self, batch: Batch, exc: Exception) -> None:
        """Raise WarehouseSchemaMismatch when ``batch.table`` is not what this version writes.

        Such a table refuses every row alike: dead-lettering them would empty
        the pipeline into traces.dlq, so the stage stops instead (its offsets
        stay uncommitted) and says what differs. A refusal with the table as
        expected is the rows' own, and they go on to be tried one by one.
        """
        differences = await self._with_retry(f"the columns of {batch.table}",
                                             lambda w: w.schema_differences(batch.table))
        if differences:
            raise WarehouseSchemaMismatch(
                f"the warehouse cannot take rows of {batch.table}: {'; '.join(differences)} (insert error: "
                f"{exc}). Batch {batch.coordinates} was not written and its offsets are not committed. A missing "
                "table or column is added when the worker starts again (tables are migrated at start-up); a "
                "column of another type must be altered by hand, or the table rebuilt from the log "
                "(`tracestream rebuild`)"
            ) from exc

    async def index_traces(self, topic: str, events: Sequence[InboundEvent]) -> None:
        """Bring the warehouse's trace index (lookups by id) up to these events, before their offsets commit."""
        last: dict[int, int] = {}
        for event in events:
            last[event.at.partition] = max(event.at.offset, last.get(event.at.partition, -1))
        await self._with_retry(f"the trace index of {topic}", lambda w: w.index_traces(topic, last))

    async def _write_rows_one_by_one(self, batch: Batch) -> list[Rejected]:
        refused: list[Rejected] = []
        for i, event in enumerate(batch.events):
            row = [[column[i]] for column in batch.columns]
            try:
                await self._with_retry(batch.span, lambda w, row=row: w.insert(batch.table, row))
                self.rows_written += 1
            except WarehouseRejected as exc:
                refused.append(_materialize_dead_letter(self._codec, event, "warehouse_rejected", str(exc)))
        return refused

    async def _with_retry(self, what: str, fn: Callable[[Warehouse], Any]) -> Any:
        delay = 0.1
        started = time.monotonic()
        while True:
            try:
                result = await self.run(fn)
                if delay > 0.1:
                    log.warning("warehouse is back after %.1fs; wrote %s",
                                time.monotonic() - started, what)
                return result
            except WarehouseUnavailable as exc:
                self.outage_retries += 1
                if self._thread.warehouse is not None and not self._thread.warehouse.embedded:
                    self._thread.reopen()  # reconnect to a server on the next try
                log.warning("warehouse unavailable while writing %s (%s); retrying in %.1fs",
                            what, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self._retry_max_seconds)

    def close(self) -> None:
        self._thread.close()

