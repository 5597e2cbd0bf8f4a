"""End-to-end ingest throughput: traces published to traces.raw → queryable in ClickHouse.

    python -m bench.ingest [--count 20000] [--seed 7] [--timeout 600]

One run, one process:

1. generate ``--count`` valid traces and encode them (Avro single-object);
2. warm the broker and the clients up with a short bare round trip on a
   throw-away topic (so neither measured phase pays for a cold JVM);
3. baseline: a bare aiokafka round trip of the same bytes, keys and partition
   count — AIOKafkaProducer (acks=all, idempotent, same linger and batch size as
   the SDK) into a fresh topic, then one AIOKafkaConsumer (fresh group,
   ``getmany`` loop) reading everything back, doing nothing with it;
4. the pipeline: publish every trace to traces.raw with ``TraceProducer``
   first (publish rate), then start the processors in this process and
   time until ``SELECT count() FROM traces FINAL`` (polled every 0.1 s) says
   every trace is queryable.

The baseline runs before the pipeline so that chDB's background merges of
the pipeline's inserts cannot slow it down. Speeds are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import (
    SHARED_MACHINE_NOTE,
    CpuMeter,
    EncodedEvents,
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
    print_machine,
    print_table,
    quiet_logging,
    rounded,
    run_settings,
    running_processors,
    temp_workdir,
    warehouse_kind,
)
from deploy.kafka import ensure_topics_async
from deploy.settings import Settings
from streams.app import MAX_MESSAGE_BYTES
from streams.producer import DEFAULT_MAX_REQUEST_SIZE, TraceProducer
from streams.topics import TOPIC_CONFIG, ensure_pipeline_topics

POLL_S = 0.1
# The SDK's batching (TraceProducer defaults), so the baseline's producer batches alike.
SDK_LINGER_MS = 20
SDK_MAX_BATCH_BYTES = 256 * 1024
WARMUP_EVENTS = 2000
# A just-created topic's leaders can bounce the first produce (NotLeaderForPartition, retried);
# a short pause keeps that retry out of the timed publish.
TOPIC_SETTLE_S = 1.0


async def bare_round_trip(
    bootstrap: str, topic: str, partitions: int, items: list[tuple[bytes, bytes]], *, group: str, timeout_s: float,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Produce ``items`` to a fresh ``topic``, then consume them all back; timings in seconds."""
    await ensure_topics_async(bootstrap, {topic: partitions}, config=TOPIC_CONFIG)
    await asyncio.sleep(TOPIC_SETTLE_S)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=SDK_LINGER_MS,
        max_batch_size=SDK_MAX_BATCH_BYTES, max_request_size=DEFAULT_MAX_REQUEST_SIZE, compression_type=None,
    )
    await producer.start()
    try:
        cpu = CpuMeter(broker_pid)
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            deliveries = [await producer.send(topic, value=value, key=key) for key, value in items]
            await producer.flush()
            await asyncio.gather(*deliveries)
        produce_s = time.perf_counter() - started
        produce_cpu = cpu.read()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )
    got = got_bytes = 0
    first_at = None
    cpu = CpuMeter(broker_pid)
    started = time.perf_counter()
    deadline = started + timeout_s
    await consumer.start()
    try:
        while got < len(items) and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                if first_at is None and records:
                    first_at = time.perf_counter()
                got += len(records)
                got_bytes += sum(len(r.value) for r in records)
        done_at = time.perf_counter()
        consume_cpu = cpu.read()
    finally:
        await consumer.stop()
    return {
        "produce_s": produce_s,
        "consumed": got,
        "consumed_bytes": got_bytes,
        "consume_s": done_at - started,
        "first_record_s": (first_at - started) if first_at else None,
        "complete": got >= len(items),
        "produce_cpu": produce_cpu,
        "consume_cpu": consume_cpu,
    }


async def publish(
    settings: Settings, bootstrap: str, items: list[tuple[bytes, bytes]], timeout_s: float, broker_pid: int | None
) -> tuple[float, dict[str, Any]]:
    """Publish every item with the producer SDK; (seconds from the first publish to the flushed report, CPU)."""
    async with TraceProducer(settings, bootstrap) as producer:
        cpu = CpuMeter(broker_pid)
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            for key, payload in items:
                await producer.publish_bytes(payload, key)
            report = await producer.flush()
        took = time.perf_counter() - started
        used = cpu.read()
    report.raise_for_failures()
    if report.delivered != len(items):
        raise RuntimeError(f"the producer reported {report.delivered} deliveries for {len(items)} events")
    return took, used


async def pipeline_ingest(
    settings: Settings, bootstrap: str, expected: int, timeout_s: float, broker_pid: int | None = None
) -> dict[str, Any]:
    """Start the processors and time until ``expected`` traces are queryable."""
    async with running_processors(settings, bootstrap) as processors:
        open_s = await open_warehouse(processors.writer)
        cpu = CpuMeter(broker_pid)
        started = time.perf_counter()
        await processors.app.start()
        app_started_s = time.perf_counter() - started
        deadline = started + timeout_s
        first: tuple[float, int] | None = None
        validated_all_s = written_all_s = None
        rows = 0
        polls = 0
        timeline: list[tuple[float, int, int]] = []  # (s since start, validated, queryable), about 1 a second
        while time.perf_counter() < deadline:
            rows = await count_traces(processors.writer)
            now = time.perf_counter() - started
            polls += 1
            if validated_all_s is None and processors.validate.validated >= expected:
                validated_all_s = now
            if written_all_s is None and processors.materialize.traces_written >= expected:
                written_all_s = now
            if rows and first is None:
                first = (now, rows)
            if not timeline or now - timeline[-1][0] >= 1.0 or rows >= expected:
                timeline.append((round(now, 1), processors.validate.validated, rows))
            if rows >= expected:
                break
            await asyncio.sleep(max(0.0, started + polls * POLL_S - time.perf_counter()))
        done_s = time.perf_counter() - started
        used = cpu.read()
        check = await processors.writer.run(lambda w: w.query(
            f"SELECT count(), uniqExact(trace_id), (SELECT count() FROM `{w.database}`.dlq FINAL) "
            f"FROM `{w.database}`.traces FINAL"))
        await drop_run_database(settings, processors.writer)
    final_rows, unique_ids, dead_letters = check[0]
    return {
        "warehouse_open_s": open_s,
        "app_start_s": app_started_s,
        "first_row_s": first[0] if first else None,
        "rows_at_first_sight": first[1] if first else 0,
        "validated_all_s": validated_all_s,
        "written_all_s": written_all_s,
        "all_queryable_s": done_s,
        "rows": int(final_rows),
        "unique_trace_ids": int(unique_ids),
        "dead_letters": int(dead_letters),
        "complete": rows >= expected,
        "validated": processors.validate.validated,
        "cpu": used,
        "timeline": timeline,
    }


def per_s(count: float, seconds: float | None) -> float:
    return count / seconds if seconds else float("nan")


async def run(base: Settings, count: int, seed: int, timeout_s: float) -> dict[str, Any]:
    info = machine()
    load_start = load_average()
    with temp_workdir() as workdir, kafka(base, workdir) as target:
        bootstrap, kafka_description, pid = target.bootstrap, target.description, target.broker_pid
        settings = run_settings(base, home=workdir / "home", bootstrap=bootstrap, tag="ingest")
        print_machine(info, kafka_description, warehouse_kind(settings))
        print(f"settings: {settings.partitions} partitions, materialize batch {settings.materialize_batch_size} rows "
              f"or {settings.materialize_batch_seconds} s; offsets are committed after each batch")

        print(f"\ngenerating and encoding {count} traces (seed {seed}) ...", flush=True)
        events: EncodedEvents = encode_events(count, seed)
        items = events.items
        mean_bytes = events.mean_bytes
        print(f"  mean encoded size {mean_bytes:.0f} B, {events.total_bytes / 1e6:.1f} MB in all; "
              f"encode {per_s(count, events.encode_s):,.0f}/s on one core (not part of the rates below)")

        prefix = settings.topic_prefix
        print(f"warming up the broker and clients ({min(WARMUP_EVENTS, count)} events, not measured) ...", flush=True)
        await bare_round_trip(bootstrap, f"{prefix}warmup", settings.partitions, items[:WARMUP_EVENTS],
                              group=f"{settings.app_id}-warmup", timeout_s=timeout_s)

        print("baseline: bare aiokafka produce, then consume ...", flush=True)
        bare = await bare_round_trip(bootstrap, f"{prefix}bare", settings.partitions, items,
                                     group=f"{settings.app_id}-bare", timeout_s=timeout_s, broker_pid=pid)

        print("pipeline: publishing with TraceProducer ...", flush=True)
        await ensure_pipeline_topics(settings, bootstrap)
        await asyncio.sleep(TOPIC_SETTLE_S)
        publish_s, publish_cpu = await publish(settings, bootstrap, items, timeout_s, pid)
        print("pipeline: starting the processors, waiting until every trace is queryable ...", flush=True)
        pipe = await pipeline_ingest(settings, bootstrap, count, timeout_s, pid)
        await drop_run_topics(settings, target)
    load_end = load_average()

    e2e_s = pipe["all_queryable_s"]
    steady_s = (e2e_s - pipe["first_row_s"]) if pipe["first_row_s"] is not None else None
    steady_rows = count - pipe["rows_at_first_sight"]
    bare_steady_s = (bare["consume_s"] - bare["first_record_s"]) if bare["first_record_s"] is not None else None
    figures: dict[str, Any] = {
        "count": count,
        "seed": seed,
        "partitions": settings.partitions,
        "mean_event_bytes": round(mean_bytes),
        "total_mb": round(events.total_bytes / 1e6, 1),
        "encode_per_s": round(per_s(count, events.encode_s)),
        "publish_s": round(publish_s, 2),
        "publish_per_s": round(per_s(count, publish_s)),
        "publish_mb_per_s": rounded(events.total_bytes / 1e6 / publish_s),
        "pipeline_complete": pipe["complete"],
        "pipeline_app_start_s": round(pipe["app_start_s"], 2),
        "pipeline_first_row_s": rounded(pipe["first_row_s"], 2) if pipe["first_row_s"] is not None else None,
        "pipeline_validated_all_s": rounded(pipe["validated_all_s"], 2) if pipe["validated_all_s"] else None,
        "pipeline_all_queryable_s": round(e2e_s, 2),
        "pipeline_e2e_per_s": round(per_s(count, e2e_s)),
        "pipeline_steady_per_s": round(per_s(steady_rows, steady_s)) if steady_s else None,
        "pipeline_timeline_s_validated_queryable": pipe["timeline"],
        "pipeline_rows": pipe["rows"],
        "pipeline_unique_trace_ids": pipe["unique_trace_ids"],
        "pipeline_dead_letters": pipe["dead_letters"],
        "warehouse_open_s": round(pipe["warehouse_open_s"], 2),
        "bare_complete": bare["complete"],
        "bare_produce_s": round(bare["produce_s"], 2),
        "bare_produce_per_s": round(per_s(count, bare["produce_s"])),
        "bare_consume_s": round(bare["consume_s"], 2),
        "bare_consume_first_record_s": rounded(bare["first_record_s"], 2) if bare["first_record_s"] else None,
        "bare_consume_per_s": round(per_s(count, bare["consume_s"])),
        # Too short to time when one fetch brought nearly everything.
        "bare_consume_steady_per_s": round(per_s(count, bare_steady_s)) if (bare_steady_s or 0) >= 0.05 else None,
        "pipeline_total_per_s": round(per_s(count, publish_s + e2e_s)),
        "bare_total_per_s": round(per_s(count, bare["produce_s"] + bare["consume_s"])),
        "ratio_total_pipeline_over_bare": round((bare["produce_s"] + bare["consume_s"]) / (publish_s + e2e_s), 4),
        "ratio_e2e_pipeline_over_bare_consume": round(bare["consume_s"] / e2e_s, 4),
        "ratio_publish_over_bare_produce": round(bare["produce_s"] / publish_s, 3),
        "cpu": {"bare_produce": bare["produce_cpu"], "bare_consume": bare["consume_cpu"],
                "publish": publish_cpu, "pipeline": pipe["cpu"]},
        "materialize_batch_size": settings.materialize_batch_size,
        "materialize_batch_seconds": settings.materialize_batch_seconds,
        "kafka": kafka_description,
        "warehouse": "clickhouse-server" if settings.clickhouse_url else "chdb-embedded",
        "machine": info,
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    return figures


def print_report(f: dict[str, Any]) -> None:
    def rate(value: Any) -> str:
        return f"{value:,}/s" if isinstance(value, int) else str(value)

    def secs(value: Any) -> str:
        return f"{value:.2f} s" if isinstance(value, (int, float)) else "n/a"

    print_table(
        f"ingest: {f['count']:,} traces, {f['mean_event_bytes']} B mean ({f['total_mb']} MB), "
        f"{f['partitions']} partitions",
        [
            ("publish (TraceProducer, acks=all)", f"{rate(f['publish_per_s'])}  ({secs(f['publish_s'])}, "
                                                  f"{f['publish_mb_per_s']} MB/s)"),
            ("bare produce (aiokafka send)", f"{rate(f['bare_produce_per_s'])}  ({secs(f['bare_produce_s'])})"),
            ("pipeline end to end", f"{rate(f['pipeline_e2e_per_s'])}  (processors start → all "
                                    f"{f['count']:,} queryable in {secs(f['pipeline_all_queryable_s'])})"),
            ("  without start-up/rebalance", f"{rate(f['pipeline_steady_per_s'])}  (first row at "
                                             f"{secs(f['pipeline_first_row_s'])} → last row)"),
            ("  all validated at", secs(f["pipeline_validated_all_s"])),
            ("bare consume (getmany, no work)", f"{rate(f['bare_consume_per_s'])}  ({secs(f['bare_consume_s'])}, "
                                                f"first record at {secs(f['bare_consume_first_record_s'])})"),
            ("  without group join", rate(f["bare_consume_steady_per_s"]) if f["bare_consume_steady_per_s"]
             else "n/a (one fetch brought nearly everything)"),
            ("pipeline total (publish + processors)", f"{rate(f['pipeline_total_per_s'])}"),
            ("bare total (produce + consume)", f"{rate(f['bare_total_per_s'])}"),
            ("ratio pipeline / bare, total", f"{f['ratio_total_pipeline_over_bare']:.4f}"),
            ("ratio processors / bare consume", f"{f['ratio_e2e_pipeline_over_bare_consume']:.4f}"),
            ("ratio publish / bare produce", f"{f['ratio_publish_over_bare_produce']:.3f}"),
            ("rows / unique ids / dead letters", f"{f['pipeline_rows']:,} / {f['pipeline_unique_trace_ids']:,} / "
                                                 f"{f['pipeline_dead_letters']}"),
            ("load average start → end", f"{f['load_average_start']} → {f['load_average_end']}"),
        ],
    )
    print("\npipeline progress (seconds since the processors started: validated / queryable):")
    print("  " + ", ".join(f"{t:g}s {v}/{q}" for t, v, q in f["pipeline_timeline_s_validated_queryable"]))
    print_table("CPU used in each phase (this process = producer or consumer or processors + chDB)", [
        (phase, cpu_line(f["cpu"][phase])) for phase in ("bare_produce", "bare_consume", "publish", "pipeline")
    ])
    if not (f["pipeline_complete"] and f["bare_complete"]):
        print("\nWARNING: a phase hit --timeout before it saw every trace; its rate is not a throughput figure")
    print("\n" + SHARED_MACHINE_NOTE.format(cpus=f["machine"]["cpus"]) + ".")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="traces to ingest (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--timeout", type=float, default=600.0, help="upper bound on each phase, seconds")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 1_000_000:
        parser.error("--count must be between 1 and 1,000,000 (every trace is held in memory)")
    quiet_logging()
    settings = Settings()
    figures = asyncio.run(run(settings, args.count, args.seed, args.timeout))
    print_report(figures)
    emit_json("ingest", figures)


if __name__ == "__main__":
    main()
