"""Publish-to-queryable latency at a steady, moderate rate.

    python -m bench.latency [--rate 500] [--seconds 20] [--poll-ms 50]

The processors run in this process; they are started and warmed up first
(a burst of traces is pushed through until it is queryable, so the consumer
groups have joined and every code path is warm). Then a publisher paces
``--rate`` traces/s for ``--seconds`` through the producer SDK
(``TraceProducer``, its default 20 ms linger included) and records each
trace's send time, while a poller asks ClickHouse every ``--poll-ms`` for the
rows past what it has already seen. A trace's latency is the start of the
first poll that returned it minus its send time, both wall clock
(``time.time()``): a row became queryable somewhere in the poll interval before
that, so latencies are overstated by up to one poll interval (≈ half of it on
average). The poll runs on the warehouse thread, as every embedded-mode read
does, so each poll delays an insert by its own (few-ms) duration at most.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiokafka import TopicPartition

from bench.common import (
    SHARED_MACHINE_NOTE,
    CpuMeter,
    count_traces,
    cpu_line,
    drop_run_database,
    drop_run_topics,
    emit_json,
    encode_events,
    kafka,
    load_average,
    machine,
    open_warehouse,
    percentile,
    print_machine,
    print_table,
    quiet_logging,
    run_settings,
    running_processors,
    temp_workdir,
    warehouse_kind,
)
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from ingest.producer import TraceProducer
from streams.topics import ensure_pipeline_topics

WARMUP_EVENTS = 1000
WARMUP_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 60.0
SDK_LINGER_MS = 20  # TraceProducer's default


class Poller:
    """Finds rows past per-partition offset watermarks and notes when each trace was first seen.

    Within a partition the materializer writes in offset order, one batch after
    the other on one thread, so a row below a partition's highest seen offset
    can never appear later: the watermark query misses nothing.
    """

    def __init__(self, writer: Any, partitions: int) -> None:
        self.writer = writer
        self.watermarks = {p: -1 for p in range(partitions)}
        self.first_seen: dict[str, float] = {}
        self.ingested_at: dict[str, float] = {}
        self.query_s: list[float] = []

    async def set_watermarks(self) -> None:
        rows = await self.writer.run(lambda w: w.query(
            f"SELECT partition, max(offset) FROM `{w.database}`.traces GROUP BY partition"))
        for partition, offset in rows:
            self.watermarks[int(partition)] = int(offset)

    async def poll(self) -> int:
        where = " OR ".join(f"(partition = {p} AND offset > {o})" for p, o in self.watermarks.items())

        def query(w: Any) -> tuple[float, float, list[tuple]]:
            started = time.time()
            rows = w.query(
                f"SELECT partition, offset, trace_id, toUnixTimestamp64Milli(ingested_at) "
                f"FROM `{w.database}`.traces WHERE {where}")
            return started, time.time(), rows

        started, ended, rows = await self.writer.run(query)
        self.query_s.append(ended - started)
        for partition, offset, trace_id, ingested_ms in rows:
            partition, offset = int(partition), int(offset)
            if offset > self.watermarks[partition]:
                self.watermarks[partition] = offset
            if trace_id not in self.first_seen:
                self.first_seen[trace_id] = started
                self.ingested_at[trace_id] = int(ingested_ms) / 1000
        return len(rows)


async def publish_paced(
    producer: TraceProducer, items: list[tuple[bytes, bytes]], rate: float, sent: dict[str, float]
) -> dict[str, float]:
    """Send ``items`` at ``rate``/s, noting each trace's wall-clock send time; pacing figures."""
    start = time.monotonic()
    worst_slip = 0.0
    for i, (key, payload) in enumerate(items):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            worst_slip = max(worst_slip, -delay)
        sent[key.decode()] = time.time()
        await producer.publish_bytes(payload, key)
    report = await producer.flush()
    report.raise_for_failures()
    took = time.monotonic() - start
    return {"publish_s": took, "achieved_rate": len(items) / took if took else float("nan"),
            "worst_slip_s": worst_slip, "delivered": report.delivered}


async def warm_up(settings: Settings, producer: TraceProducer, writer: Any, seed: int) -> float:
    """Push a burst through the started processors until it is queryable; seconds it took."""
    items = encode_events(WARMUP_EVENTS, seed).items
    started = time.perf_counter()
    for key, payload in items:
        await producer.publish_bytes(payload, key)
    (await producer.flush()).raise_for_failures()
    deadline = started + WARMUP_TIMEOUT_S
    while await count_traces(writer) < len(items):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the warm-up traces were not all queryable within {WARMUP_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.1)
    took = time.perf_counter() - started
    await asyncio.sleep(1.0)  # let the warm-up's last batch commit
    return took


async def record_timestamps(kafka: KafkaClients, topic: str, partitions: int, timeout_s: float = 60.0) -> dict[str, float]:
    """key → record timestamp (s) of every record on ``topic``: when validate produced each trace.

    The record timestamp is the producer's create time, taken from the same
    wall clock as the send times.
    """
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = kafka.consumer(enable_auto_commit=False, group_id=None)
    await kafka.start(consumer)
    stamps: dict[str, float] = {}
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(position >= ends[tp] for position, tp in zip(positions, tps)):
                break
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.key is not None:
                        stamps.setdefault(record.key.decode(), record.timestamp / 1000)
    finally:
        await consumer.stop()
    return stamps


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "min_ms": round(ordered[0] * 1000, 1),
        "p50_ms": round(percentile(ordered, 50) * 1000, 1),
        "p90_ms": round(percentile(ordered, 90) * 1000, 1),
        "p99_ms": round(percentile(ordered, 99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 1),
    }


async def run(base: Settings, rate: float, seconds: float, poll_s: float, seed: int) -> dict[str, Any]:
    info = machine()
    load_start = load_average()
    count = max(1, int(rate * seconds))
    with temp_workdir() as workdir, kafka(base, workdir) as target:
        clients, bootstrap, kafka_description = target.kafka, target.bootstrap, target.description
        settings = run_settings(base, home=workdir / "home", bootstrap=bootstrap, tag="latency")
        print_machine(info, kafka_description, warehouse_kind(settings))
        print(f"settings: {settings.partitions} partitions; latency is bounded below by the materialize batch "
              f"window ({settings.materialize_batch_seconds} s, met twice: validate and materialize both batch "
              f"with it), the producer linger ({SDK_LINGER_MS} ms) and the poll interval ({poll_s * 1000:.0f} ms); "
              "offsets are committed after each batch is durable")
        print(f"\nencoding {count} traces ({rate:g}/s for {seconds:g} s) ...", flush=True)
        items = encode_events(count, seed).items
        mean_bytes = sum(len(v) for _, v in items) / len(items)

        await ensure_pipeline_topics(settings, clients)
        async with running_processors(settings, clients) as processors, \
                TraceProducer(settings, clients) as producer:
            await open_warehouse(processors.writer)
            await processors.app.start()
            print(f"warming up ({WARMUP_EVENTS} traces through the pipeline) ...", flush=True)
            warmup_s = await warm_up(settings, producer, processors.writer, seed + 1)

            poller = Poller(processors.writer, settings.partitions)
            await poller.set_watermarks()
            sent: dict[str, float] = {}
            print(f"publishing {count} traces at {rate:g}/s and polling every {poll_s * 1000:.0f} ms ...", flush=True)
            cpu = CpuMeter(target.broker_pid)
            publisher = asyncio.create_task(publish_paced(producer, items, rate, sent))
            started = time.monotonic()
            deadline = started + seconds + DRAIN_TIMEOUT_S
            polls = 0
            while time.monotonic() < deadline:
                await poller.poll()
                polls += 1
                if publisher.done() and len(poller.first_seen) >= count:
                    break
                await asyncio.sleep(max(0.0, started + polls * poll_s - time.monotonic()))
            if not publisher.done():
                publisher.cancel()
            pacing = await publisher if not publisher.cancelled() else {}
            used = cpu.read()
            validated = processors.validate.validated
            await drop_run_database(settings, processors.writer)
        valid_at = await record_timestamps(clients, settings.topics.valid, settings.partitions)
        await drop_run_topics(settings, target)
    load_end = load_average()

    latencies = [poller.first_seen[t] - sent[t] for t in sent if t in poller.first_seen]
    to_batch = [poller.ingested_at[t] - sent[t] for t in sent if t in poller.ingested_at]
    to_valid = [valid_at[t] - sent[t] for t in sent if t in valid_at]
    valid_to_batch = [poller.ingested_at[t] - valid_at[t] for t in sent if t in valid_at and t in poller.ingested_at]
    after_batch = [poller.first_seen[t] - poller.ingested_at[t] for t in sent if t in poller.first_seen]
    queries = sorted(poller.query_s)
    by_second: list[list[float]] = []
    if sent:
        first_send = min(sent.values())
        buckets: dict[int, list[float]] = {}
        for t, at in sent.items():
            if t in poller.first_seen:
                buckets.setdefault(int(at - first_send), []).append(poller.first_seen[t] - at)
        for second in sorted(buckets):
            ordered = sorted(buckets[second])
            by_second.append([second, len(ordered), round(percentile(ordered, 50) * 1000),
                              round(ordered[-1] * 1000)])
    figures: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "sent": len(sent),
        "seen": len(latencies),
        "missing": len(sent) - len(latencies),
        "mean_event_bytes": round(mean_bytes),
        "achieved_rate": round(pacing.get("achieved_rate", float("nan")), 1),
        "publisher_worst_slip_ms": round(pacing.get("worst_slip_s", float("nan")) * 1000, 1),
        "latency": summary(latencies),
        "send_to_materialize_batch": summary(to_batch),
        "send_to_validated": summary(to_valid),
        "validated_to_materialize_batch": summary(valid_to_batch),
        "materialize_batch_to_seen": summary(after_batch),
        "by_send_second_n_p50ms_maxms": by_second,
        "cpu": used,
        "poll_interval_ms": round(poll_s * 1000),
        "polls": polls,
        "poll_query_mean_ms": round(sum(queries) / len(queries) * 1000, 1) if queries else None,
        "poll_query_max_ms": round(queries[-1] * 1000, 1) if queries else None,
        "warmup_s": round(warmup_s, 2),
        "partitions": settings.partitions,
        "materialize_batch_size": settings.materialize_batch_size,
        "materialize_batch_seconds": settings.materialize_batch_seconds,
        "producer_linger_ms": SDK_LINGER_MS,
        "validated_incl_warmup": validated,
        "kafka": kafka_description,
        "warehouse": "clickhouse-server" if settings.clickhouse_url else "chdb-embedded",
        "machine": info,
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    return figures


def print_report(f: dict[str, Any]) -> None:
    def dist(d: dict[str, float]) -> str:
        if not d.get("n"):
            return "n/a"
        return (f"p50 {d['p50_ms']:.0f} ms, p90 {d['p90_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms, "
                f"max {d['max_ms']:.0f} ms (mean {d['mean_ms']:.0f}, min {d['min_ms']:.0f})")

    print_table(
        f"latency: {f['sent']:,} traces at {f['rate']:g}/s for {f['seconds']:g} s, {f['mean_event_bytes']} B mean, "
        f"{f['partitions']} partitions",
        [
            ("publish → queryable", dist(f["latency"])),
            ("  publish → materializer batch", dist(f["send_to_materialize_batch"])),
            ("    publish → validated", dist(f["send_to_validated"])),
            ("    validated → materializer batch", dist(f["validated_to_materialize_batch"])),
            ("  batch → seen by a poll", dist(f["materialize_batch_to_seen"])),
            ("traces seen / sent", f"{f['seen']:,} / {f['sent']:,} ({f['missing']} missing)"),
            ("achieved publish rate", f"{f['achieved_rate']:g}/s (worst pacing slip {f['publisher_worst_slip_ms']} ms)"),
            ("poll interval (resolution)", f"{f['poll_interval_ms']} ms; poll query mean {f['poll_query_mean_ms']} ms, "
                                           f"max {f['poll_query_max_ms']} ms"),
            ("materialize batch window", f"{f['materialize_batch_seconds']} s (or {f['materialize_batch_size']} rows)"),
            ("load average start → end", f"{f['load_average_start']} → {f['load_average_end']}"),
        ],
    )
    print("\nlatency by the second a trace was sent (p50/max ms): " + ", ".join(
        f"{s}s {p50}/{mx}" for s, _, p50, mx in f["by_send_second_n_p50ms_maxms"]))
    print("CPU while publishing and polling: " + cpu_line(f["cpu"]))
    print("\n'validated' is the traces.valid record's timestamp (validate's send, ms precision); 'materializer "
          "batch' is the row's ingested_at (when the materializer built the rows, ms precision); 'batch → seen' is "
          "the insert plus the wait for the next poll. All on this machine's wall clock.")
    if f["missing"]:
        print(f"\nWARNING: {f['missing']} traces were not seen within the drain timeout ({DRAIN_TIMEOUT_S:.0f} s)")
    print(SHARED_MACHINE_NOTE.format(cpus=f["machine"]["cpus"]) + ".")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="traces per second (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to publish (default 20)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="poll interval, ms (default 50)")
    parser.add_argument("--seed", type=int, default=11, help="generator seed (default 11)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.poll_ms <= 0:
        parser.error("--rate, --seconds and --poll-ms must be positive")
    if args.rate * args.seconds > 1_000_000:
        parser.error("--rate × --seconds is capped at 1,000,000 traces")
    quiet_logging()
    settings = Settings()
    figures = asyncio.run(run(settings, args.rate, args.seconds, args.poll_ms / 1000, args.seed))
    print_report(figures)
    emit_json("latency", figures)


if __name__ == "__main__":
    main()
