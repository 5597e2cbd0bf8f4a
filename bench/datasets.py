"""Dataset replay and export throughput, against a bare aiokafka consume of the same bytes.

    python -m bench.datasets [--count 50000[,1000000...]] [--seed 9] [--timeout 900] [--workers N]

One run per size, one process: publish ``--count`` valid traces, materialize them with
the processors (in this process, which owns the embedded warehouse), snapshot
them as one dataset, then time, each over the whole dataset:

1. bare aiokafka: assign every partition of traces.valid, ``getmany`` from the
   log start to the snapshot's ends, doing nothing with the records;
2. replay from Kafka: raw (``read_ranges_raw``: the records' bytes in order, ranges
   checked) and decoded (``read_ranges``: dataset records, Avro decoded; and with ``--workers``,
   ``dataset_batches(..., workers=N)``: decoded in N processes, sent back pickled, and
   ``dataset_tables(..., workers=N)``: decoded into Arrow columns by ClickHouse's Avro reader in N processes);
3. replay from ClickHouse (``dataset.warehouse_reader``, on the warehouse thread), as records and as columns;
4. export of every format (JSON Lines and Parquet) from Kafka, in this process and (``--workers``, the CPU
   count by default) decoding and formatting in worker processes, and of every format from ClickHouse
   (``dataset.warehouse_columns``: the engine writes the hashed bytes and the lines), to /dev/null.

With several sizes, each runs in turn on a broker and warehouse of its own,
and a last table shows how each figure changes with size.

Each figure is records per second of wall time and per CPU second of this process (``time.process_time``:
steadier than wall time when other jobs share the machine; the broker's JVM is not in it). Speeds are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from aiokafka import TopicPartition

from bench.common import (
    SHARED_MACHINE_NOTE,
    KafkaTarget,
    drop_run_database,
    drop_run_topics,
    emit_json,
    encode_events,
    kafka,
    load_average,
    machine,
    print_machine,
    print_table,
    quiet_logging,
    run_settings,
    running_processors,
    temp_workdir,
    warehouse_kind,
)
from bench.ingest import publish
from dataset.export import (
    EXPORT_FORMATS,
    dataset_batches,
    dataset_records,
    dataset_tables,
    export_dataset,
)
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.worker_pool import start_workers
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.ranges import read_ranges, read_ranges_raw
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics


async def bare_consume(kafka: KafkaClients, ranges) -> tuple[int, int, float]:
    """(records, bytes, seconds) of reading the ranges with no decoding at all."""
    consumer = kafka.consumer(enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=4 * 1024 * 1024,
                                fetch_max_bytes=16 * 1024 * 1024)
    await kafka.start(consumer)
    try:
        started = time.perf_counter()
        records = size = 0
        for r in ranges:
            tp = TopicPartition(r.topic, r.partition)
            consumer.assign([tp])
            consumer.seek(tp, r.start)
            while await consumer.position(tp) < r.end:
                for record in (await consumer.getmany(tp, timeout_ms=1000, max_records=5000)).get(tp, []):
                    if record.offset < r.end:
                        records += 1
                        size += len(record.value)
        return records, size, time.perf_counter() - started
    finally:
        await consumer.stop()


CPU_SECONDS: dict[str, float] = {}
"""CPU seconds this process spent in each timed pass (``time.process_time``; the broker's JVM is not in it)."""


async def timed(label: str, coro) -> tuple[str, Any, float]:
    started, cpu = time.perf_counter(), time.process_time()
    result = await coro
    CPU_SECONDS[label] = time.process_time() - cpu
    return label, result, time.perf_counter() - started


async def count_async(iterator) -> int:
    n = 0
    async for _ in iterator:
        n += 1
    return n


async def count_batches(iterator) -> int:
    n = 0
    async for batch in iterator:
        n += len(batch)
    return n


async def count_tables(iterator) -> int:
    n = 0
    async for table in iterator:
        n += table.num_rows
    return n


async def run(base: Settings, target: KafkaTarget, count: int, seed: int, timeout_s: float,
              workers: int) -> dict[str, Any]:
    """One size on ``target``'s broker and ``base``'s home, in topics and a database of its own (dropped after)."""
    figures: dict[str, Any] = {"count": count, "seed": seed, "workers": workers, "machine": machine()}
    codec = AvroCodec(default_registry())
    settings = run_settings(base, home=base.home, bootstrap=target.bootstrap, tag="datasets")
    print_machine(figures["machine"], target.description, warehouse_kind(settings))
    print(f"\ngenerating and publishing {count:,} traces ...", flush=True)
    events = encode_events(count, seed)
    figures["mean_event_bytes"] = round(events.mean_bytes)
    await ensure_pipeline_topics(settings, target.kafka)
    await publish(settings, target.kafka, events.items, timeout_s, target.broker_pid)
    async with running_processors(settings, target.kafka) as processors:
        await processors.app.start()
        print("materializing ...", flush=True)
        await asyncio.wait_for(wait_until_caught_up(settings, target.kafka), timeout_s)
        _, manifest, took = await timed("snapshot", create_dataset(
            settings, target.kafka, DatasetRequest("bench"), codec, wait_timeout_s=timeout_s))
        figures["snapshot_s"] = round(took, 2)
        figures["snapshot_per_s"] = round(manifest.record_count / took)
        figures["records"] = manifest.record_count
        print(f"snapshot of {manifest.record_count:,} records (hashed by replay) in {took:.1f} s", flush=True)

        cpu = time.process_time()
        n, size, took = await bare_consume(target.kafka, manifest.ranges)
        CPU_SECONDS["bare_consume"] = time.process_time() - cpu
        figures["bare_consume_per_cpu_s"] = round(n / CPU_SECONDS["bare_consume"])
        figures["bare_consume_per_s"] = round(n / took)
        figures["bare_consume_mb_per_s"] = round(size / took / 1e6, 1)
        runs = [
            await timed("replay_kafka_raw", count_async(read_ranges_raw(target.kafka, manifest.ranges))),
            await timed("replay_kafka", count_async(read_ranges(target.kafka, manifest.ranges, codec=codec))),
            await timed("replay_warehouse", count_async(dataset_records(
                manifest, source="warehouse", warehouse=processors.writer.run))),
            await timed("replay_warehouse_columns", count_tables(dataset_tables(
                manifest, source="warehouse", warehouse=processors.writer.run))),
        ]
        with open(os.devnull, "wb") as sink:
            for fmt in EXPORT_FORMATS:
                runs.append(await timed(f"export_{fmt}_kafka", export_dataset(
                    manifest, fmt, "all", sink, source="kafka", kafka=target.kafka, codec=codec)))
            if workers:
                await start_workers(codec, workers, columns=True)
                runs.append(await timed("replay_kafka_workers", count_batches(dataset_batches(
                    manifest, source="kafka", kafka=target.kafka, codec=codec, workers=workers))))
                runs.append(await timed("replay_kafka_columns", count_tables(dataset_tables(
                    manifest, source="kafka", kafka=target.kafka, codec=codec, workers=workers))))
                for fmt in EXPORT_FORMATS:
                    runs.append(await timed(f"export_{fmt}_kafka_workers", export_dataset(
                        manifest, fmt, "all", sink, source="kafka", kafka=target.kafka, codec=codec,
                        workers=workers)))
            for fmt in EXPORT_FORMATS:
                runs.append(await timed(f"export_{fmt}_warehouse", export_dataset(
                    manifest, fmt, "all", sink, source="warehouse", warehouse=processors.writer.run)))
        for label, result, took in runs:
            n = result if isinstance(result, int) else result.records
            assert n == manifest.record_count, f"{label} read {n} of {manifest.record_count} records"
            figures[f"{label}_per_s"] = round(n / took)
            figures[f"{label}_per_cpu_s"] = round(n / CPU_SECONDS[label])
        for kind in ("replay_kafka_raw", "replay_kafka", "replay_kafka_workers",
                     "replay_kafka_columns")[:4 if workers else 2]:
            figures[f"ratio_{kind}_over_bare"] = round(figures[f"{kind}_per_s"] / figures["bare_consume_per_s"], 3)
        figures["load_average_after"] = load_average()
        await drop_run_database(settings, processors.writer)
    await drop_run_topics(settings, target)
    return figures


def _rate(f: dict[str, Any], label: str) -> str:
    """Records per second of wall time, and per CPU second of this process (steadier on a shared machine)."""
    return f"{f[f'{label}_per_s']:,}/s ({f[f'{label}_per_cpu_s']:,} per CPU-s)"


def print_report(f: dict[str, Any]) -> None:
    rows = [
        ("records in the dataset", f"{f['records']:,} ({f['mean_event_bytes']} B mean)"),
        ("snapshot (wait + replay + hash)", f"{f['snapshot_s']} s"),
        ("bare aiokafka consume (no decode)", f"{_rate(f, 'bare_consume')}, {f['bare_consume_mb_per_s']} MB/s"),
        ("replay from Kafka, raw (ordered, range-checked)", _rate(f, "replay_kafka_raw")),
        ("  ratio raw replay / bare", f"{f['ratio_replay_kafka_raw_over_bare']}"),
        ("replay from Kafka, decoded records", _rate(f, "replay_kafka")),
        ("  ratio decoded replay / bare", f"{f['ratio_replay_kafka_over_bare']}"),
        ("replay from ClickHouse", _rate(f, "replay_warehouse")),
        ("replay from ClickHouse, Arrow columns", _rate(f, "replay_warehouse_columns")),
    ]
    rows += [(f"export {fmt} from Kafka", _rate(f, f"export_{fmt}_kafka")) for fmt in EXPORT_FORMATS]
    if f["workers"]:
        rows += [
            (f"replay from Kafka, decoded in {f['workers']} workers (CPU-s: this process only)",
             _rate(f, "replay_kafka_workers")),
            ("  ratio decoded replay in workers / bare", f"{f['ratio_replay_kafka_workers_over_bare']}"),
            (f"replay from Kafka, decoded into Arrow columns in {f['workers']} workers (CPU-s: this process only)",
             _rate(f, "replay_kafka_columns")),
            ("  ratio decoded replay into columns / bare", f"{f['ratio_replay_kafka_columns_over_bare']}"),
        ]
        rows += [(f"export {fmt} from Kafka, {f['workers']} workers (CPU-s: this process only)",
                  _rate(f, f"export_{fmt}_kafka_workers")) for fmt in EXPORT_FORMATS]
    rows += [(f"export {fmt} from ClickHouse", _rate(f, f"export_{fmt}_warehouse")) for fmt in EXPORT_FORMATS]
    rows.append(("load average at the end", ", ".join(f"{x:.2f}" for x in f["load_average_after"])))
    print_table(f"datasets: {f['records']:,} traces", rows)
    print(SHARED_MACHINE_NOTE.format(cpus=f["machine"]["cpus"]))


SCALING = ("snapshot", "bare_consume", "replay_kafka_raw", "replay_kafka", "replay_kafka_columns",
           "replay_warehouse", "replay_warehouse_columns",
           *(f"export_{fmt}_{source}" for source in ("kafka", "kafka_workers", "warehouse") for fmt in EXPORT_FORMATS))


def print_scaling(runs: list[dict[str, Any]]) -> None:
    """Records per second of each phase at each size, and last size / first size."""
    if len(runs) < 2:
        return
    counts = [f["records"] for f in runs]
    print("\nhow each figure changes with size (records/s; ratio = last size / first size):")
    print("  " + " " * 34 + "".join(f"{n:>14,}" for n in counts) + "     ratio")
    for label in SCALING:
        key = "snapshot_per_s" if label == "snapshot" else f"{label}_per_s"
        if all(key in f for f in runs):
            rates = [f[key] for f in runs]
            print(f"  {label:<34}" + "".join(f"{rate:>14,}" for rate in rates) + f"   {rates[-1] / max(rates[0], 1):>6.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", default="50000",
                        help="traces in the dataset; several sizes comma-separated, run in turn (default 50000)")
    parser.add_argument("--seed", type=int, default=9, help="generator seed (default 9)")
    parser.add_argument("--timeout", type=float, default=900.0, help="upper bound on each phase, seconds")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="also export from Kafka decoding in this many processes (0: not; default: the CPU count)")
    args = parser.parse_args(argv)
    try:
        counts = [int(part) for part in args.count.split(",")]
    except ValueError:
        parser.error(f"--count takes whole numbers separated by commas, got {args.count!r}")
    if any(n < 1 for n in counts):
        parser.error("--count: each size must be at least 1")
    quiet_logging()
    runs = []
    with temp_workdir() as workdir:  # one home for every size: chDB lets a process open one warehouse folder
        base = Settings().model_copy(update={"home": workdir / "home"})
        with kafka(base, workdir) as target:
            for count in counts:
                figures = asyncio.run(run(base, target, count, args.seed, args.timeout, args.workers))
                print_report(figures)
                emit_json("datasets", figures)
                runs.append(figures)
    print_scaling(runs)


if __name__ == "__main__":
    main()
