"""End-to-end ingest throughput: traces published to traces.raw → queryable in ClickHouse.

    python -m bench.ingest [--count 20000] [--seed 7] [--validate-processes 0,1,2] [--http-seconds 10] [--timeout 600]

One run, one broker:

1. generate ``--count`` valid traces and encode them (Avro single-object);
2. warm the broker and the clients up with a short bare round trip on a
   throw-away topic (so neither measured phase pays for a cold JVM);
3. baseline: a bare aiokafka round trip of the same bytes, keys and partition
   count — AIOKafkaProducer (acks=all, idempotent, same linger and batch size as
   the SDK) into a fresh topic, then one AIOKafkaConsumer (fresh group,
   ``getmany`` loop) reading everything back, doing nothing with it;
4. the cost of one Kafka transaction: a transactional producer commits
   transactions that hold only a consumed offset (begin, offsets, commit),
   the fixed price validate pays per partition and batch;
5. the pipeline, once per ``--validate-processes`` value N, each on fresh
   topics: publish every trace to traces.raw with ``TraceProducer`` (publish
   rate), then start the processors and time until ``SELECT count() FROM
   traces FINAL`` (polled every 0.1 s) says every trace is queryable. N=0 runs
   validate and materialize in this process; N>0 runs materialize here and
   validate in N ``tracestream worker --stages validate`` processes, as
   ``tracestream serve`` does on a machine with more than one core;
6. the HTTP ingest door as ``tracestream serve`` runs it (API and materialize
   in this process, validate in its default number of processes of its own):
   ``--http-connections`` clients in a second process POST batches of 1,000
   traces for ``--http-seconds``, and the figure is from the first accepted
   trace until every accepted one is queryable ("batch ingest until
   queryable").

The baseline runs before the pipeline so that chDB's background merges of
the pipeline's inserts cannot slow it down. Speeds are printed, never asserted.
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
    EncodedEvents,
    count_traces,
    cpu_line,
    drop_run_database,
    drop_run_topics,
    emit_json,
    encode_events,
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
from bench.common import kafka as kafka_target
from deploy.kafka_admin import ensure_topics_async
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from ingest.producer import DEFAULT_MAX_REQUEST_SIZE, TraceProducer
from kafkalog.groups import STAGES, validate_group
from kafkalog.lag import ClusterOffsets
from streams.app import MAX_MESSAGE_BYTES
from streams.processes import ValidateProcesses, default_validate_processes
from streams.topics import TOPIC_CONFIG, ensure_pipeline_topics
from streams.transactions import RETRY_BACKOFF_MS

POLL_S = 0.1
# The SDK's batching (TraceProducer defaults), so the baseline's producer batches alike.
SDK_LINGER_MS = 20
SDK_MAX_BATCH_BYTES = 256 * 1024
WARMUP_EVENTS = 2000
# A just-created topic's leaders can bounce the first produce (NotLeaderForPartition, retried);
# a short pause keeps that retry out of the timed publish.
TOPIC_SETTLE_S = 1.0
TRANSACTION_ROUNDS = 200


async def bare_round_trip(
    kafka: KafkaClients, topic: str, partitions: int, items: list[tuple[bytes, bytes]], *, group: str, timeout_s: float,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Produce ``items`` to a fresh ``topic``, then consume them all back; timings in seconds."""
    await ensure_topics_async(kafka, {topic: partitions}, config=TOPIC_CONFIG)
    await asyncio.sleep(TOPIC_SETTLE_S)
    producer = kafka.producer(
        acks="all", enable_idempotence=True, linger_ms=SDK_LINGER_MS,
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

    consumer = kafka.consumer(
        topic, group_id=group, auto_offset_reset="earliest",
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
    settings: Settings, kafka: KafkaClients, items: list[tuple[bytes, bytes]], timeout_s: float, broker_pid: int | None
) -> tuple[float, dict[str, Any]]:
    """Publish every item with the producer SDK; (seconds from the first publish to the flushed report, CPU)."""
    async with TraceProducer(settings, kafka) as producer:
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


async def transaction_cost(kafka: KafkaClients, topic: str, group: str, rounds: int) -> dict[str, float]:
    """Milliseconds per transaction that holds only a consumed offset: validate's fixed cost per partition and batch."""
    await ensure_topics_async(kafka, {topic: 1}, config=TOPIC_CONFIG)
    producer = await kafka.start(kafka.producer(transactional_id=f"{group}-cost", acks="all",
                                                retry_backoff_ms=RETRY_BACKOFF_MS))
    tp = TopicPartition(topic, 0)
    try:
        took = []
        for offset in range(rounds + 3):
            started = time.perf_counter()
            async with producer.transaction():
                await producer.send_offsets_to_transaction({tp: offset}, group)
            took.append(time.perf_counter() - started)
        took = sorted(took[3:])  # the first ones find the coordinator
    finally:
        await producer.stop()
    return {"mean_ms": 1000 * sum(took) / len(took), "p50_ms": 1000 * took[len(took) // 2],
            "p99_ms": 1000 * took[min(len(took) - 1, int(len(took) * 0.99))]}


async def validated_count(offsets: ClusterOffsets, settings: Settings) -> int:
    return sum((await offsets.committed(validate_group(settings))).values())


async def pipeline_ingest(
    settings: Settings, kafka: KafkaClients, expected: int, timeout_s: float, *, validate_processes: int,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Start the processors and time until ``expected`` traces are queryable."""
    stages = ("materialize",) if validate_processes else STAGES
    children = ValidateProcesses(settings, validate_processes, log_dir=settings.home / "logs")
    async with running_processors(settings, kafka, stages=stages) as processors, ClusterOffsets(kafka) as offsets:
        open_s = await open_warehouse(processors.writer)
        cpu = CpuMeter(broker_pid)
        started = time.perf_counter()
        if validate_processes:
            await children.start()
        await processors.app.start()
        app_started_s = time.perf_counter() - started
        deadline = started + timeout_s
        first: tuple[float, int] | None = None
        validated_all_s = None
        validated = rows = polls = 0
        timeline: list[tuple[float, int, int]] = []  # (s since start, validated, queryable), about 1 a second
        try:
            while time.perf_counter() < deadline:
                rows = await count_traces(processors.writer)
                now = time.perf_counter() - started
                polls += 1
                if validated_all_s is None and (polls % 5 == 0 or rows >= expected):
                    validated = await validated_count(offsets, settings)
                    if validated >= expected:
                        validated_all_s = now
                if rows and first is None:
                    first = (now, rows)
                if not timeline or now - timeline[-1][0] >= 1.0 or rows >= expected:
                    timeline.append((round(now, 1), validated, rows))
                if rows >= expected:
                    break
                await asyncio.sleep(max(0.0, started + polls * POLL_S - time.perf_counter()))
            done_s = time.perf_counter() - started
            used = cpu.read()
        finally:
            if validate_processes:
                await children.stop()
        transactions = processors.counters().get("transactions")
        check = await processors.writer.run(lambda w: w.query(
            f"SELECT count(), uniqExact(trace_id), (SELECT count() FROM `{w.database}`.dlq FINAL) "
            f"FROM `{w.database}`.traces FINAL"))
        await drop_run_database(settings, processors.writer)
    final_rows, unique_ids, dead_letters = check[0]
    return {
        "validate_processes": validate_processes,
        "warehouse_open_s": open_s,
        "app_start_s": app_started_s,
        "first_row_s": first[0] if first else None,
        "rows_at_first_sight": first[1] if first else 0,
        "validated_all_s": validated_all_s,
        "all_queryable_s": done_s,
        "rows": int(final_rows),
        "unique_trace_ids": int(unique_ids),
        "dead_letters": int(dead_letters),
        "complete": rows >= expected,
        "transactions": transactions,
        "cpu": used,
        "timeline": timeline,
    }


async def http_door_ingest(
    settings: Settings, kafka: KafkaClients, seconds: float, connections: int, timeout_s: float, *,
    validate_processes: int,
) -> dict[str, Any]:
    """``connections`` clients POST batches of 1,000 to the ingest door for ``seconds``, processors running.

    Arranged as ``tracestream serve`` is (API and materialize in this process,
    validate in ``validate_processes`` of its own); the clients are a second
    process (``bench.api_load``'s). Timed from the first accepted trace until
    every accepted trace is queryable.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    from api.app import create_app
    from api.server import serving
    from bench.common import free_port

    port = free_port()
    stages = ("materialize",) if validate_processes else STAGES
    children = ValidateProcesses(settings, validate_processes, log_dir=settings.home / "logs")
    app = create_app(settings, kafka=kafka)
    spec = settings.home / "http-door.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"host": "127.0.0.1", "ids": [], "phases": [
        {"name": "ingest", "kind": "ingest", "port": port, "connections": connections, "seconds": seconds,
         "bodies": max(8, int(seconds * 6))}]}))
    async with running_processors(settings, kafka, stages=stages) as processors, \
            serving(app, "127.0.0.1", port):
        await open_warehouse(processors.writer)
        if validate_processes:
            await children.start()
        await processors.app.start()
        publisher = app.state.api.publisher
        try:
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.api_load", "--client", str(spec), stdout=subprocess.PIPE,
                env=settings.child_environment(), cwd=Path(__file__).resolve().parents[1])
            waiting = asyncio.ensure_future(client.communicate())
            first_accepted = None
            while publisher.accepted == 0 and not waiting.done():
                await asyncio.sleep(0.01)
            first_accepted = time.perf_counter()
            stdout, _ = await waiting
            if client.returncode != 0:
                raise SystemExit(f"the ingest clients failed ({client.returncode})")
            posted_s = time.perf_counter() - first_accepted
            accepted = publisher.accepted
            deadline = time.perf_counter() + timeout_s
            rows = dead = 0
            while time.perf_counter() < deadline:
                rows = await count_traces(processors.writer)
                if rows >= accepted:
                    break
                dead = await processors.writer.run(
                    lambda w: w.query(f"SELECT count() FROM `{w.database}`.dlq FINAL")[0][0])
                if rows + dead >= accepted:
                    break
                await asyncio.sleep(POLL_S)
            queryable_s = time.perf_counter() - first_accepted
        finally:
            if validate_processes:
                await children.stop()
        await drop_run_database(settings, processors.writer)
    phase = json.loads(stdout.decode().strip().splitlines()[-1])["ingest"]
    return {
        "connections": connections, "validate_processes": validate_processes, "accepted": accepted,
        "posting_s": round(posted_s, 2), "accepted_per_s": round(per_s(accepted, posted_s)),
        "all_queryable_s": round(queryable_s, 2), "queryable_per_s": round(per_s(accepted, queryable_s)),
        "complete": rows + dead >= accepted, "dead_letters": int(dead), "batch_p50_ms": phase["p50_ms"], "batch_p99_ms": phase["p99_ms"],
        "statuses": phase["statuses"],
    }


def per_s(count: float, seconds: float | None) -> float:
    return count / seconds if seconds else float("nan")


async def run(base: Settings, count: int, seed: int, validate_processes: list[int], timeout_s: float,
              http_seconds: float = 0, http_connections: int = 4) -> dict[str, Any]:
    info = machine()
    load_start = load_average()
    with temp_workdir() as workdir, kafka_target(base, workdir) as target:
        kafka, kafka_description, pid = target.kafka, target.description, target.broker_pid
        settings = run_settings(base, home=workdir / "home", bootstrap=target.bootstrap, tag="ingest")
        print_machine(info, kafka_description, warehouse_kind(settings))
        print(f"settings: {settings.partitions} partitions, materialize batch {settings.materialize_batch_size} rows "
              f"or {settings.materialize_batch_seconds} s; validate commits each partition's batch in a transaction")

        print(f"\ngenerating and encoding {count} traces (seed {seed}) ...", flush=True)
        events: EncodedEvents = encode_events(count, seed)
        items = events.items
        mean_bytes = events.mean_bytes
        print(f"  mean encoded size {mean_bytes:.0f} B, {events.total_bytes / 1e6:.1f} MB in all; "
              f"encode {per_s(count, events.encode_s):,.0f}/s on one core (not part of the rates below)")

        prefix = settings.topic_prefix
        print(f"warming up the broker and clients ({min(WARMUP_EVENTS, count)} events, not measured) ...", flush=True)
        await bare_round_trip(kafka, f"{prefix}warmup", settings.partitions, items[:WARMUP_EVENTS],
                              group=f"{settings.app_id}-warmup", timeout_s=timeout_s)

        print("baseline: bare aiokafka produce, then consume ...", flush=True)
        bare = await bare_round_trip(kafka, f"{prefix}bare", settings.partitions, items,
                                     group=f"{settings.app_id}-bare", timeout_s=timeout_s, broker_pid=pid)
        print("the cost of a transaction (offsets only) ...", flush=True)
        transaction = await transaction_cost(kafka, f"{prefix}txn-cost", f"{settings.app_id}-txn", TRANSACTION_ROUNDS)

        pipelines = []
        for processes in validate_processes:
            run_set = run_settings(base, home=workdir / "home", bootstrap=target.bootstrap, tag=f"ingest-v{processes}")
            print(f"pipeline, validate in {processes or 'this'} process{'es' if processes > 1 else ''}: "
                  "publishing with TraceProducer ...", flush=True)
            await ensure_pipeline_topics(run_set, kafka)
            await asyncio.sleep(TOPIC_SETTLE_S)
            publish_s, publish_cpu = await publish(run_set, kafka, items, timeout_s, pid)
            print("  starting the processors, waiting until every trace is queryable ...", flush=True)
            pipe = await pipeline_ingest(run_set, kafka, count, timeout_s, validate_processes=processes, broker_pid=pid)
            pipe.update(publish_s=publish_s, publish_cpu=publish_cpu)
            pipelines.append(pipe)
            await drop_run_topics(run_set, target)
        http = None
        if http_seconds > 0:
            run_set = run_settings(base, home=workdir / "home", bootstrap=target.bootstrap, tag="ingest-http")
            door_processes = default_validate_processes()
            print(f"HTTP door: {http_connections} clients POST batches of 1,000 for {http_seconds:g} s while the "
                  f"processors run (validate in {door_processes or 'the API'} process"
                  f"{'es' if door_processes > 1 else ''}) ...", flush=True)
            await ensure_pipeline_topics(run_set, kafka)
            await asyncio.sleep(TOPIC_SETTLE_S)
            http = await http_door_ingest(run_set, kafka, http_seconds, http_connections, min(timeout_s, 180),
                                          validate_processes=door_processes)
            await drop_run_topics(run_set, target)
        await drop_run_topics(settings, target)
    load_end = load_average()
    figures = figures_of(count, seed, settings, events, bare, transaction, pipelines, info, kafka_description,
                         load_start, load_end)
    figures["http_door"] = http
    return figures


def figures_of(count, seed, settings, events, bare, transaction, pipelines, info, kafka_description,
               load_start, load_end) -> dict[str, Any]:
    bare_total_s = bare["produce_s"] + bare["consume_s"]
    bare_steady_s = (bare["consume_s"] - bare["first_record_s"]) if bare["first_record_s"] is not None else None
    runs = []
    for pipe in pipelines:
        e2e_s = pipe["all_queryable_s"]
        steady_s = (e2e_s - pipe["first_row_s"]) if pipe["first_row_s"] is not None else None
        steady_rows = count - pipe["rows_at_first_sight"]
        traces_per_transaction = (count / pipe["transactions"]) if pipe["transactions"] else None
        runs.append({
            "validate_processes": pipe["validate_processes"],
            "publish_s": round(pipe["publish_s"], 2),
            "publish_per_s": round(per_s(count, pipe["publish_s"])),
            "complete": pipe["complete"],
            "app_start_s": round(pipe["app_start_s"], 2),
            "first_row_s": rounded(pipe["first_row_s"], 2) if pipe["first_row_s"] is not None else None,
            "validated_all_s": rounded(pipe["validated_all_s"], 2) if pipe["validated_all_s"] else None,
            "all_queryable_s": round(e2e_s, 2),
            "e2e_per_s": round(per_s(count, e2e_s)),
            "steady_per_s": round(per_s(steady_rows, steady_s)) if steady_s else None,
            "total_per_s": round(per_s(count, pipe["publish_s"] + e2e_s)),
            "ratio_total_pipeline_over_bare": round(bare_total_s / (pipe["publish_s"] + e2e_s), 4),
            "ratio_e2e_pipeline_over_bare_consume": round(bare["consume_s"] / e2e_s, 4),
            "transactions": pipe["transactions"],
            "traces_per_transaction": rounded(traces_per_transaction, 1) if traces_per_transaction else None,
            "transaction_ms_per_trace": (rounded(transaction["mean_ms"] / traces_per_transaction, 4)
                                         if traces_per_transaction else None),
            "rows": pipe["rows"],
            "unique_trace_ids": pipe["unique_trace_ids"],
            "dead_letters": pipe["dead_letters"],
            "timeline_s_validated_queryable": pipe["timeline"],
            "cpu": {"publish": pipe["publish_cpu"], "pipeline": pipe["cpu"]},
        })
    return {
        "count": count,
        "seed": seed,
        "partitions": settings.partitions,
        "mean_event_bytes": round(events.mean_bytes),
        "total_mb": round(events.total_bytes / 1e6, 1),
        "encode_per_s": round(per_s(count, events.encode_s)),
        "bare_complete": bare["complete"],
        "bare_produce_s": round(bare["produce_s"], 2),
        "bare_produce_per_s": round(per_s(count, bare["produce_s"])),
        "bare_consume_s": round(bare["consume_s"], 2),
        "bare_consume_first_record_s": rounded(bare["first_record_s"], 2) if bare["first_record_s"] else None,
        "bare_consume_per_s": round(per_s(count, bare["consume_s"])),
        # Too short to time when one fetch brought nearly everything.
        "bare_consume_steady_per_s": round(per_s(count, bare_steady_s)) if (bare_steady_s or 0) >= 0.05 else None,
        "bare_total_per_s": round(per_s(count, bare_total_s)),
        "transaction_ms": {k: round(v, 2) for k, v in transaction.items()},
        "pipelines": runs,
        "cpu": {"bare_produce": bare["produce_cpu"], "bare_consume": bare["consume_cpu"]},
        "materialize_batch_size": settings.materialize_batch_size,
        "materialize_batch_seconds": settings.materialize_batch_seconds,
        "kafka": kafka_description,
        "warehouse": "clickhouse-server" if settings.clickhouse_url else "chdb-embedded",
        "machine": info,
        "load_average_start": load_start,
        "load_average_end": load_end,
    }


def print_report(f: dict[str, Any]) -> None:
    def rate(value: Any) -> str:
        return f"{value:,}/s" if isinstance(value, int) else str(value)

    def secs(value: Any) -> str:
        return f"{value:.2f} s" if isinstance(value, (int, float)) else "n/a"

    txn = f["transaction_ms"]
    print_table(
        f"ingest: {f['count']:,} traces, {f['mean_event_bytes']} B mean ({f['total_mb']} MB), "
        f"{f['partitions']} partitions — baseline",
        [
            ("bare produce (aiokafka send)", f"{rate(f['bare_produce_per_s'])}  ({secs(f['bare_produce_s'])})"),
            ("bare consume (getmany, no work)", f"{rate(f['bare_consume_per_s'])}  ({secs(f['bare_consume_s'])}, "
                                                f"first record at {secs(f['bare_consume_first_record_s'])})"),
            ("  without group join", rate(f["bare_consume_steady_per_s"]) if f["bare_consume_steady_per_s"]
             else "n/a (one fetch brought nearly everything)"),
            ("bare total (produce + consume)", rate(f["bare_total_per_s"])),
            ("one transaction (offsets only)", f"mean {txn['mean_ms']} ms, p50 {txn['p50_ms']} ms, "
                                               f"p99 {txn['p99_ms']} ms"),
        ],
    )
    for run in f["pipelines"]:
        where = (f"validate in {run['validate_processes']} process{'es' if run['validate_processes'] > 1 else ''} "
                 "of its own" if run["validate_processes"] else "validate and materialize in one process")
        rows = [
            ("publish (TraceProducer, acks=all)", f"{rate(run['publish_per_s'])}  ({secs(run['publish_s'])})"),
            ("processors start → all queryable", f"{rate(run['e2e_per_s'])}  ({secs(run['all_queryable_s'])})"),
            ("  without start-up/rebalance", f"{rate(run['steady_per_s'])}  (first row at "
                                             f"{secs(run['first_row_s'])} → last row)"),
            ("  all validated at", secs(run["validated_all_s"])),
            ("publish + process, total", rate(run["total_per_s"])),
            ("ratio pipeline / bare, total", f"{run['ratio_total_pipeline_over_bare']:.4f}"),
            ("ratio processors / bare consume", f"{run['ratio_e2e_pipeline_over_bare_consume']:.4f}"),
        ]
        if run["transactions"]:
            rows.append(("transactions", f"{run['transactions']:,} ({run['traces_per_transaction']} traces each; "
                                         f"~{run['transaction_ms_per_trace']} ms of transaction per trace)"))
        rows.append(("rows / unique ids / dead letters",
                     f"{run['rows']:,} / {run['unique_trace_ids']:,} / {run['dead_letters']}"))
        print_table(f"pipeline: {where}", rows)
        print("  progress (s since start: validated / queryable): "
              + ", ".join(f"{t:g}s {v}/{q}" for t, v, q in run["timeline_s_validated_queryable"]))
        print("  CPU: publish " + cpu_line(run["cpu"]["publish"]) + "; processors " + cpu_line(run["cpu"]["pipeline"]))
    http = f.get("http_door")
    if http:
        print_table(
            f"HTTP ingest door: {http['connections']} clients, batches of 1,000 (POST /api/traces/batch), processors "
            f"running (validate in {http['validate_processes'] or 'the API'} process"
            f"{'es' if http['validate_processes'] > 1 else ''})",
            [
                ("accepted (202 once Kafka acknowledged)", f"{rate(http['accepted_per_s'])}  ({http['accepted']:,} "
                                                            f"in {secs(http['posting_s'])})"),
                ("first accepted → all queryable", f"{rate(http['queryable_per_s'])}  "
                                                    f"({secs(http['all_queryable_s'])})"),
                ("per batch", f"p50 {http['batch_p50_ms']:.0f} ms, p99 {http['batch_p99_ms']:.0f} ms, "
                              f"statuses {http['statuses']}"),
                ("dead letters / complete", f"{http['dead_letters']:,} / {http['complete']}"),
            ],
        )
    print(f"\nload average start → end: {f['load_average_start']} → {f['load_average_end']}")
    if not (f["bare_complete"] and all(run["complete"] for run in f["pipelines"])):
        print("\nWARNING: a phase hit --timeout before it saw every trace; its rate is not a throughput figure")
    print("\n" + SHARED_MACHINE_NOTE.format(cpus=f["machine"]["cpus"]) + ".")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="traces to ingest (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--validate-processes", default="0,1,2",
                        help="comma-separated: run the pipeline with validate in this many processes of its own "
                             "(0: in the materializer's process); default 0,1,2")
    parser.add_argument("--timeout", type=float, default=600.0, help="upper bound on each phase, seconds")
    parser.add_argument("--http-seconds", type=float, default=10.0,
                        help="POST batches to the HTTP ingest door for this long, processors running, and time "
                             "until all are queryable (0 skips it; default 10)")
    parser.add_argument("--http-connections", type=int, default=4, help="clients of the HTTP phase (default 4)")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 1_000_000:
        parser.error("--count must be between 1 and 1,000,000 (every trace is held in memory)")
    try:
        processes = [int(n) for n in args.validate_processes.split(",")]
    except ValueError:
        parser.error("--validate-processes takes numbers separated by commas, e.g. 0,1,2")
    if any(n < 0 or n > 8 for n in processes):
        parser.error("--validate-processes: each value between 0 and 8")
    quiet_logging()
    settings = Settings()
    figures = asyncio.run(run(settings, args.count, args.seed, processes, args.timeout,
                              http_seconds=args.http_seconds, http_connections=args.http_connections))
    print_report(figures)
    emit_json("ingest", figures)


if __name__ == "__main__":
    main()
