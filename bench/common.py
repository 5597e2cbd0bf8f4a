"""What both benchmarks share: a broker, a temp home, fresh names, the processors, printing.

Each benchmark reads ``Settings()`` once at its entry point and passes it down;
``run_settings`` derives the settings of one run from it (a temp home, a fresh
topic prefix, consumer group and database), leaving every tuning knob
(partitions, batch size and window, commit interval) as the caller configured it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.groups import STAGES

SHARED_MACHINE_NOTE = (
    "the Kafka broker JVM, the producer and the processors (and chDB, in-process) all share "
    "this machine's {cpus} cores on loopback; the figures describe that setting, not a cluster"
)


# --- the machine ----------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    """1/5/15-minute load averages: how busy the machine was besides us."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def print_machine(info: dict[str, Any], bootstrap_kind: str, warehouse_kind: str) -> None:
    print(f"machine: {info['cpus']} cores ({info['cpu_model']}), {info['mem_gib']} GiB, "
          f"Python {info['python']}; load average at start {load_average()}")
    print(f"kafka: {bootstrap_kind}; warehouse: {warehouse_kind}")
    print("note: " + SHARED_MACHINE_NOTE.format(cpus=info["cpus"]))


# --- the things a run needs -------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def temp_workdir() -> Iterator[Path]:
    """A temp folder for the broker's data and TRACESTREAM_HOME, removed afterwards.

    SIGTERM (``kill``, ``timeout``) unwinds the bench like Ctrl-C does, so the local broker it started
    is stopped and the folder removed; by default it left both behind.
    """
    path = Path(tempfile.mkdtemp(prefix="tracestream-bench-"))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield path
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class KafkaTarget:
    kafka: KafkaClients
    description: str
    broker_pid: int | None
    """The local broker JVM (to account for its CPU), None for an existing cluster."""

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap


@contextlib.contextmanager
def kafka(settings: Settings, workdir: Path) -> Iterator[KafkaTarget]:
    """The configured cluster, else a local broker on a temp data dir (stopped afterwards)."""
    if settings.kafka_bootstrap:
        yield KafkaTarget(KafkaClients.from_settings(settings, settings.kafka_bootstrap),
                          f"existing cluster at {settings.kafka_bootstrap} (TRACESTREAM_KAFKA_BOOTSTRAP)", None)
        return
    from deploy.kafka_broker import LocalKafkaBroker

    broker = LocalKafkaBroker(settings, data_dir=workdir / "kafka")
    started = time.perf_counter()
    bootstrap = broker.start(timeout_s=120)
    took = time.perf_counter() - started
    try:
        yield KafkaTarget(broker.clients(), (f"local broker, Apache Kafka {settings.kafka_version} (KRaft, 1 node, "
                                      f"heap {settings.kafka_heap_mb} MiB) on {bootstrap}, started in {took:.1f} s"),
                          broker.pid)
    finally:
        broker.stop()


# --- CPU accounting -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu_s(pid: int | None) -> float | None:
    """user+system CPU seconds of ``pid`` (all its threads), from /proc; None where unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_s() -> float | None:
    """CPU seconds every core spent busy (not idle/iowait) since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(values[:8]) - values[3] - values[4]) / _TICK
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU used during a phase: this process (all threads, chDB's too), the broker JVM, the whole machine.

    ``others`` = machine − this process − broker: whatever else ran (another
    test run, say); when it is not near zero the figures were measured on a
    busy machine.
    """

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float | None, float | None]:
        return (time.perf_counter(), _process_cpu_s(os.getpid()) or 0.0,
                _process_cpu_s(self.broker_pid), _machine_busy_s())

    def restart(self) -> None:
        self._start = self._sample()

    def read(self) -> dict[str, float | None]:
        end = self._sample()
        wall = end[0] - self._start[0]
        this = end[1] - self._start[1]
        broker = end[2] - self._start[2] if end[2] is not None and self._start[2] is not None else None
        machine = end[3] - self._start[3] if end[3] is not None and self._start[3] is not None else None
        others = machine - this - (broker or 0.0) if machine is not None else None
        r = lambda v: round(v, 2) if v is not None else None  # noqa: E731
        return {"wall_s": r(wall), "this_process_cpu_s": r(this), "broker_cpu_s": r(broker),
                "other_processes_cpu_s": r(max(others, 0.0)) if others is not None else None,
                "machine_busy_cores": r(machine / wall) if machine is not None and wall else None}


def cpu_line(cpu: dict[str, float | None]) -> str:
    def fmt(v: float | None) -> str:
        return f"{v:.1f} s" if v is not None else "n/a"

    return (f"this process {fmt(cpu['this_process_cpu_s'])}, broker {fmt(cpu['broker_cpu_s'])}, "
            f"others {fmt(cpu['other_processes_cpu_s'])} CPU over {fmt(cpu['wall_s'])}; "
            f"machine busy {cpu['machine_busy_cores']} of {os.cpu_count()} cores")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_settings(base: Settings, *, home: Path, bootstrap: str, tag: str) -> Settings:
    """The settings of one run: ``base`` with a temp home and fresh names (topics, group, database)."""
    run = uuid.uuid4().hex[:10]
    return base.model_copy(update={
        "home": home,
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"bench{run}.",
        "app_id": f"bench-{tag}-{run}",
        "clickhouse_database": f"bench_{run}",
        "web_port": free_port(),
    })


def warehouse_kind(settings: Settings) -> str:
    if settings.clickhouse_url:
        return "ClickHouse server (TRACESTREAM_CLICKHOUSE_URL)"
    return f"embedded chDB (in this process) at {settings.warehouse_dir}"


def quiet_logging() -> None:
    """Warnings and errors only: faust and aiokafka are chatty at INFO."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- events -----------------------------------------------------------------------


@dataclass
class EncodedEvents:
    """Valid traces as (key, Avro single-object bytes), ready to publish."""

    items: list[tuple[bytes, bytes]]
    generate_s: float
    encode_s: float

    @property
    def mean_bytes(self) -> float:
        return sum(len(v) for _, v in self.items) / max(len(self.items), 1)

    @property
    def total_bytes(self) -> int:
        return sum(len(v) for _, v in self.items)


def encode_events(count: int, seed: int) -> EncodedEvents:
    """``count`` valid traces of stream ``seed``, encoded as the producer SDK encodes them."""
    from devtools.generator import generate_events
    from schemas.codec import AvroCodec
    from schemas.contracts import TRACE
    from schemas.registry import default_registry

    codec = AvroCodec(default_registry())
    started = time.perf_counter()
    events = list(generate_events(count, seed, broken_share=0.0))
    generated = time.perf_counter()
    items = [(e.trace_id.encode(), codec.encode(e.record, TRACE, e.schema_version)) for e in events]
    encoded = time.perf_counter()
    return EncodedEvents(items, generated - started, encoded - generated)


# --- the processors -----------------------------------------------------------------


@asynccontextmanager
async def running_processors(
    settings: Settings, kafka: KafkaClients, stages: tuple[str, ...] = STAGES
) -> AsyncIterator[Any]:
    """Build the processors (``stages``) in this process; yield them unstarted (``streams.app.Processors``).

    The caller starts ``processors.app`` (so it can time the start); it is stopped on exit.
    """
    from streams.app import build_app

    processors = build_app(settings, kafka, stages=stages)
    try:
        yield processors
    finally:
        with contextlib.suppress(Exception):
            await processors.app.stop()
        if processors.writer is not None:
            processors.writer.close()


async def open_warehouse(writer: Any) -> float:
    """Open the warehouse on the writer thread (creating the tables); seconds it took."""
    started = time.perf_counter()
    await writer.run(lambda w: None)
    return time.perf_counter() - started


async def count_traces(writer: Any) -> int:
    rows = await writer.run(lambda w: w.query(f"SELECT count() FROM `{w.database}`.traces FINAL"))
    return int(rows[0][0])


async def drop_run_topics(settings: Settings, target: KafkaTarget) -> None:
    """On a cluster we did not start, delete the topics this run created (best effort).

    A local broker's data folder is removed with the temp folder instead.
    """
    if target.broker_pid is not None or not settings.topic_prefix:
        return
    admin = target.kafka.admin()
    try:
        await target.kafka.start(admin)
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the figures
        print(f"note: could not delete this run's topics ({settings.topic_prefix}*): {exc!r}")
    finally:
        await admin.close()


async def drop_run_database(settings: Settings, writer: Any) -> None:
    """On a ClickHouse server, drop this run's database (best effort); chDB's goes with the temp home."""
    if not settings.clickhouse_url:
        return
    try:
        await writer.run(lambda w: w.command(f"DROP DATABASE IF EXISTS `{w.database}`"))
    except Exception as exc:  # noqa: BLE001
        print(f"note: could not drop database {settings.clickhouse_database}: {exc!r}")


# --- printing -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; nan when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print()
    print(title)
    print("-" * len(title))
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def emit_json(bench: str, figures: dict[str, Any]) -> None:
    """The last line of output: every figure, machine-readable."""
    print(json.dumps({"bench": bench, **figures}, default=str), flush=True)


def rounded(value: float, digits: int = 1) -> float:
    return round(value, digits) if value == value else value  # keep nan as is


def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
