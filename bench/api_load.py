"""The read API and the HTTP ingest door under load, from a second process on loopback.

    python -m bench.api_load [--traces 100000,1000000] [--seconds 10] [--connections 16] [--ingest-seconds 8]

This process fills the warehouse and serves the API; a second process (this
module with ``--client``) runs a bounded load client on raw asyncio sockets
(HTTP/1.1 keep-alive, N connections, fixed duration) and reports every
request's latency back as JSON.

Filling: generated traces are encoded as the producer SDK encodes them,
turned into ``traces`` rows by the materializer's own row builder
(``streams.materialize.trace_rows``) with made-up Kafka coordinates (4
partitions, dense offsets) and inserted straight into the embedded warehouse;
the trace index is then brought up to them by the same call the materializer
makes after each batch (``Warehouse.index_traces``). The pipeline is not run:
the figures are about reading. With several sizes (``--traces 100000,1000000``)
the warehouse is filled up to each in turn and every phase runs again, so the
last table shows how each figure changes with size.

Phases, each ``--seconds`` long:

- ``GET /healthz``: the floor of this stack (uvicorn + FastAPI, no warehouse);
  every ratio below is against it, in the same run;
- ``GET /api/traces?limit=100&order=asc|desc`` following ``next_cursor``: every
  connection walking the list from its start (``list_asc``, ``list_desc``), or
  from its own random cursor (``list_scattered``), against the API as
  configured (read-ahead runs kept until the next write, which these phases
  have none of); and the same walks against the API with the cache off
  (``uncached_asc``, ``uncached_desc``: every page is its ClickHouse queries,
  as with a ClickHouse server, 16 clients queueing on the one warehouse
  thread); and, in this process, one client's uncached pages (from the start
  and from the middle of the list, each order): the cost of a page alone;
- ``GET /api/traces/{id}`` for random ids (``by_id``: the trace index);
- ``POST /api/traces`` one trace per request (``single_post``: the ingest
  door's requests share produce batches), acknowledged by Kafka before the 202;
- ``POST /api/traces/batch`` with 1000 traces per request: traces/s accepted.

Beside the phases, the options for the by-id lookup are timed in this process
on the same ids: the warehouse point query (what the API asks when the index
does not hold a trace) against the index.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any, Self

from bench.common import (
    SHARED_MACHINE_NOTE,
    emit_json,
    kafka,
    load_average,
    machine,
    percentile,
    quiet_logging,
    run_settings,
    temp_workdir,
)
from deploy.settings import Settings

PARTITIONS = 4
FILL_CHUNK = 5000


# --- the client (second process) --------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read one response (Content-Length framed)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=16 * 1024 * 1024)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        status = int(status_line.split(b" ", 2)[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length)
        parts = []
        while (size := int((await self.reader.readline()).strip(), 16)) > 0:
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()
        await self.reader.readline()
        return status, b"".join(parts)

    def close(self) -> None:
        self.writer.close()


def _next_cursor(body: bytes) -> str | None:
    rest = body[body.rfind(b'"next_cursor":') + 14:]
    return None if rest.startswith(b"null") else rest[1:rest.index(b'"', 1)].decode()


async def _load(host: str, port: int, connections: int, seconds: float, make_request) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    items = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal items
        conn = await Connection.open(host, port)
        state: dict[str, Any] = {"n": n}
        try:
            while time.perf_counter() < deadline:
                method, path, body = make_request(state)
                started = time.perf_counter()
                status, payload = await conn.request(method, path, body)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                items += state.get("on_response", lambda s, p: 0)(status, payload)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies), "wall_s": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "items": items,
    }


def list_requests(start_cursors: list[str], order: str = "asc"):
    def make(state: dict) -> tuple[str, str, bytes]:
        if "cursor" not in state:
            state["cursor"] = start_cursors[state["n"] % len(start_cursors)]

            def on_response(status: int, payload: bytes) -> int:
                state["cursor"] = _next_cursor(payload) if status == 200 else None
                return 100 if status == 200 else 0

            state["on_response"] = on_response
        cursor = state["cursor"]
        return "GET", f"/api/traces?limit=100&order={order}" + (f"&cursor={cursor}" if cursor else ""), b""
    return make


def by_id_requests(ids: list[str], seed: int):
    rng = random.Random(seed)

    def make(state: dict) -> tuple[str, str, bytes]:
        return "GET", f"/api/traces/{rng.choice(ids)}", b""
    return make


def ingest_requests(bodies: list[bytes]):
    def make(state: dict) -> tuple[str, str, bytes]:
        state.setdefault("i", state["n"])
        state["i"] += 1
        state.setdefault("on_response", lambda status, payload: 1000 if status == 202 else 0)
        return "POST", "/api/traces/batch", bodies[state["i"] % len(bodies)]
    return make


def single_requests(bodies: list[bytes]):
    def make(state: dict) -> tuple[str, str, bytes]:
        state.setdefault("i", state["n"] * 100_000)
        state["i"] += 1
        return "POST", "/api/traces", bodies[state["i"] % len(bodies)]
    return make


def single_bodies(count: int, seed: int) -> list[bytes]:
    from devtools.generator import generate_events

    bodies = []
    for event in generate_events(count, seed, broken_share=0.0):
        record = {k: v for k, v in event.record.items() if v is not None}
        record["created_at"] = record["created_at"].isoformat()
        bodies.append(json.dumps(record).encode())
    return bodies


def ingest_bodies(count: int, seed: int) -> list[bytes]:
    from devtools.generator import generate_events

    bodies, batch = [], []
    for event in generate_events(count * 1000, seed, broken_share=0.0):
        record = {k: v for k, v in event.record.items() if v is not None}
        record["created_at"] = record["created_at"].isoformat()
        batch.append(record)
        if len(batch) == 1000:
            bodies.append(json.dumps(batch).encode())
            batch = []
    return bodies


async def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    host, out = spec["host"], {}
    for phase in spec["phases"]:
        kind, port = phase["kind"], phase["port"]
        if kind == "healthz":
            make = lambda state: ("GET", "/healthz", b"")
        elif kind == "list":
            make = list_requests(phase.get("start_cursors") or [None], phase.get("order", "asc"))
        elif kind == "by_id":
            make = by_id_requests(spec["ids"], seed=1)
        elif kind == "single":
            make = single_requests(single_bodies(20_000, seed=phase["seed"]))
        else:
            bodies = ingest_bodies(phase["bodies"], seed=99)
            make = ingest_requests(bodies)
        await _load(host, port, phase["connections"], min(1.0, phase["seconds"]), make)  # warm-up, not counted
        out[phase["name"]] = await _load(host, port, phase["connections"], phase["seconds"], make)
    return out


# --- the server (this process) ------------------------------------------------------------


def fill(settings: Settings, count: int, seed: int, next_offset: list[int]) -> tuple[list[str], float]:
    """Insert ``count`` traces as the materializer would write them; their ids and the seconds it took.

    ``next_offset`` (one per partition) continues where the previous fill ended.
    """
    from datetime import datetime

    from devtools.generator import generate_events
    from ingest.producer import murmur2
    from schemas.codec import AvroCodec
    from schemas.contracts import TRACE
    from schemas.registry import default_registry
    from streams.coordinates import Coordinates
    from streams.materialize import InboundEvent, trace_rows
    from warehouse.client import Warehouse

    codec = AvroCodec(default_registry())
    warehouse = Warehouse.connect(settings)
    ids: list[str] = []
    started = time.perf_counter()
    chunk: list[InboundEvent] = []
    for event in generate_events(count, seed, broken_share=0.0):
        key = event.trace_id.encode()
        partition = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        value = codec.encode(event.record, TRACE, event.schema_version)
        chunk.append(InboundEvent(Coordinates(settings.topics.valid, partition, next_offset[partition]), key, value))
        next_offset[partition] += 1
        ids.append(event.trace_id)
        if len(chunk) == FILL_CHUNK:
            warehouse.insert("traces", trace_rows(chunk, codec, datetime.now(UTC)).columns)
            chunk = []
    if chunk:
        warehouse.insert("traces", trace_rows(chunk, codec, datetime.now(UTC)).columns)
    return ids, time.perf_counter() - started


def index(settings: Settings) -> tuple[int, float]:
    """Bring the trace index up to the warehouse (the materializer's call); rows copied and seconds."""
    from warehouse.client import Warehouse

    started = time.perf_counter()
    copied = Warehouse.connect(settings).index_traces(settings.topics.valid, {})
    return copied, time.perf_counter() - started


def uncached_pages(settings: Settings, pages: int = 60) -> dict[str, Any]:
    """One client, no cache: each list page is its queries (as with a ClickHouse server), timed in this process.

    Per order, ``pages`` pages of 100 walked from the start, and as many from the middle of the list.
    """
    from api.cursor import Cursor, Order
    from api.queries.traces import TraceFilter, list_page
    from warehouse.client import Warehouse

    warehouse = Warehouse.connect(settings)
    topic = settings.topics.valid
    middle = warehouse.query("SELECT partition, toInt64(quantileExact(0.5)(offset)) FROM {db:Identifier}.traces "
                             "GROUP BY partition", {"db": warehouse.database})
    out = {}
    for order in (Order.ASC, Order.DESC):
        for where, start in (("start", Cursor.start(order)),
                             ("middle", Cursor.of(order, {int(p): int(o) for p, o in middle}))):
            times, cursor = [], start
            list_page(warehouse, topic, start, 100, TraceFilter())  # not timed: learns the topic's partitions
            for _ in range(pages):
                started = time.perf_counter()
                run = list_page(warehouse, topic, cursor, 100, TraceFilter())
                times.append(time.perf_counter() - started)
                cursor = run.cursor(-1) if run.lines else start
            times.sort()
            out[f"{order.value}_{where}"] = {"p50_ms": round(percentile(times, 50) * 1000, 1),
                                             "p99_ms": round(percentile(times, 99) * 1000, 1)}
    return out


def lookup_options(settings: Settings, ids: list[str], n: int = 300) -> dict[str, Any]:
    """One trace by id, timed in this process: the warehouse point query against the trace index."""
    from api.queries.traces import by_id
    from warehouse.client import Warehouse

    warehouse = Warehouse.connect(settings)
    rng = random.Random(11)
    out = {}
    for name, lookup in (("warehouse_point_query", lambda i: by_id(warehouse, i)),
                         ("trace_index", warehouse.trace_index.get)):
        times = []
        for trace_id in rng.sample(ids, min(n, len(ids))):
            started = time.perf_counter()
            assert lookup(trace_id)
            times.append(time.perf_counter() - started)
        times.sort()
        out[name] = {"p50_ms": round(percentile(times, 50) * 1000, 3), "p99_ms": round(percentile(times, 99) * 1000, 3),
                     "per_s_one_thread": round(len(times) / sum(times), 0)}
    return out


def parts(settings: Settings) -> int:
    from warehouse.client import Warehouse

    w = Warehouse.connect(settings)
    return w.query("SELECT count() FROM system.parts WHERE database = {db:String} AND table = 'traces' AND active",
                   {"db": w.database})[0][0]


def merge(settings: Settings) -> float:
    """Merge the table's parts, as ClickHouse's background merges do some minutes after a load."""
    from warehouse.client import Warehouse

    w = Warehouse.connect(settings)
    started = time.perf_counter()
    w.command(f"OPTIMIZE TABLE `{w.database}`.traces FINAL")
    return time.perf_counter() - started


class CollectionTimes:
    """The garbage collector's pauses in this process while the load runs (``gc.callbacks``): full collections
    stop the event loop that serves every request."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)
        self._started = 0.0

    def __enter__(self) -> Self:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for generation in (0, 1, 2):
            pauses = [s for g, s in self.pauses if g == generation]
            out[f"gen{generation}"] = {"collections": len(pauses), "total_ms": round(sum(pauses) * 1000),
                                       "max_ms": round(max(pauses, default=0) * 1000, 1),
                                       "over_10ms": sum(p > 0.01 for p in pauses)}
        return out


async def serve_and_load(settings: Settings, args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    from api.app import create_app
    from api.server import serving
    from bench.common import free_port
    cached_port, uncached_port = free_port(), free_port()
    cached = create_app(settings)
    uncached = create_app(settings.model_copy(update={"api_cache_entries": 0}), ingest=False)
    from api.cursor import Cursor, Order, encode_cursor

    rng = random.Random(5)
    per_partition = len(ids) // PARTITIONS
    scattered = [encode_cursor(Cursor.of(Order.ASC, {p: rng.randrange(per_partition) for p in range(PARTITIONS)}))
                 for _ in range(args.connections)]
    seconds, conns = args.seconds, args.connections
    def list_phase(name: str, port: int, order: str, **extra) -> dict[str, Any]:
        return {"name": name, "kind": "list", "port": port, "order": order, "connections": conns,
                "seconds": seconds, **extra}

    spec = {"host": "127.0.0.1", "ids": rng.sample(ids, min(len(ids), 20000)), "phases": [
        {"name": "healthz", "kind": "healthz", "port": cached_port, "connections": conns, "seconds": seconds},
        list_phase("list_asc", cached_port, "asc"),
        list_phase("list_desc", cached_port, "desc"),
        list_phase("list_scattered", cached_port, "asc", start_cursors=scattered),
        list_phase("uncached_asc", uncached_port, "asc"),
        list_phase("uncached_desc", uncached_port, "desc"),
        {"name": "by_id", "kind": "by_id", "port": cached_port, "connections": conns, "seconds": seconds},
        {"name": "single_post", "kind": "single", "port": cached_port, "connections": conns, "seconds": seconds,
         "seed": 7000 + len(ids)},
        {"name": "ingest_batch_1000", "kind": "ingest", "port": cached_port, "connections": args.ingest_connections,
         "seconds": args.ingest_seconds, "bodies": 8},
    ]}
    spec["phases"] = [phase for phase in spec["phases"] if phase["name"] in args.phases]
    spec_file = Path(args.workdir) / "client.json"
    spec_file.write_text(json.dumps(spec))
    async with serving(cached, "127.0.0.1", cached_port), serving(uncached, "127.0.0.1", uncached_port):
        with CollectionTimes() as collections:
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.api_load", "--client", str(spec_file),
                stdout=subprocess.PIPE, env=settings.child_environment(), cwd=Path(__file__).resolve().parents[1])
            stdout, _ = await client.communicate()
        if client.returncode != 0:
            raise SystemExit(f"the load client failed ({client.returncode})")
        reader = cached.state.api.reader
        figures = json.loads(stdout.decode().strip().splitlines()[-1])
        figures["gc"] = collections.summary()
        pages = cached.state.api.pages
        figures["cache"] = {"hits": reader.hits, "misses": reader.misses,
                            "list_pages": pages.pages, "list_queries": pages.queries}
    return figures


READ_PHASES = ("healthz", "list_asc", "list_desc", "list_scattered", "uncached_asc", "uncached_desc", "by_id",
               "single_post")


def report(size: int, figures: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{size:,} traces; {args.connections} connections, {args.seconds:g} s per phase; latency from the "
          "client's side")
    floor = figures["healthz"]["requests_per_s"]
    for name in READ_PHASES:
        if name not in figures:
            continue
        f = figures[name]
        print(f"  {name:<15} {f['requests_per_s']:>8,.0f} req/s  p50 {f['p50_ms']:>6.2f} ms  p99 {f['p99_ms']:>7.2f} ms"
              f"  ({f['requests_per_s'] / floor:.2f}x healthz)  statuses {f['statuses']}")
    ingest = figures.get("ingest_batch_1000")
    if ingest:
        print(f"  ingest (POST /api/traces/batch, 1000 traces, {args.ingest_connections} connections): "
              f"{ingest['items'] / ingest['wall_s']:,.0f} traces/s accepted, p50 {ingest['p50_ms']:.0f} ms, "
              f"p99 {ingest['p99_ms']:.0f} ms per batch, statuses {ingest['statuses']}")
    options = figures["lookup_options"]
    print("  by-id options, in this process on one thread: " + "; ".join(
        f"{name} p50 {o['p50_ms']:.3f} ms, p99 {o['p99_ms']:.3f} ms ({o['per_s_one_thread']:,.0f}/s)"
        for name, o in options.items()))
    print("  one uncached page of 100, one client, in this process: " + "; ".join(
        f"{name} p50 {o['p50_ms']:.1f} ms, p99 {o['p99_ms']:.1f} ms" for name, o in figures["uncached_pages"].items()))
    print(f"  list pages served {figures['cache']['list_pages']:,} with {figures['cache']['list_queries']:,} "
          f"warehouse queries; by-id warehouse fallbacks {figures['cache']['misses']:,}")
    print("  garbage collections in the serving process over all phases: " + "; ".join(
        f"{name} {g['collections']:,} ({g['total_ms']:,} ms, longest {g['max_ms']} ms)"
        for name, g in figures["gc"].items()))


def report_scaling(runs: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(runs)
    if len(sizes) < 2:
        return
    print("\nhow each figure changes with size (req/s, p99 ms; ratio = last size / first size):")
    print("  " + " " * 16 + "".join(f"{size:>24,}" for size in sizes) + "      ratio")
    for name in (name for name in READ_PHASES if name in runs[sizes[0]]):
        cells = "".join(f"{runs[n][name]['requests_per_s']:>13,.0f} /{runs[n][name]['p99_ms']:>8.1f}" for n in sizes)
        ratio = runs[sizes[-1]][name]["requests_per_s"] / max(runs[sizes[0]][name]["requests_per_s"], 1e-9)
        print(f"  {name:<16}{cells}   {ratio:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default="100000",
                        help="Stored traces, or several sizes comma-separated (filled up to each in turn).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each phase.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ingest-seconds", type=float, default=8.0)
    parser.add_argument("--ingest-connections", type=int, default=2)
    parser.add_argument("--no-merge", action="store_true", help="Leave the inserted parts unmerged.")
    parser.add_argument("--phases", default=",".join(("healthz", *READ_PHASES[1:], "ingest_batch_1000")),
                        help="The load phases to run, comma-separated (healthz always runs: ratios need it).")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.phases = {"healthz", *args.phases.split(",")}
    unknown = args.phases - {*READ_PHASES, "ingest_batch_1000"}
    if unknown:
        parser.error(f"unknown phases {', '.join(sorted(unknown))}; choose from {', '.join(READ_PHASES)}, ingest_batch_1000")
    if args.client:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asyncio.run(client_main(json.loads(Path(args.client).read_text())))))
        return
    sizes = sorted({int(size.replace("_", "")) for size in args.traces.split(",")})

    quiet_logging()
    base = Settings()
    info = machine()
    print(f"machine: {info['cpus']} cores ({info['cpu_model']}), Python {info['python']}; "
          f"load average at start {load_average()}")
    print("note: " + SHARED_MACHINE_NOTE.format(cpus=info["cpus"]) + "; the load client is one more process on them")
    runs: dict[int, dict[str, Any]] = {}
    with temp_workdir() as workdir, kafka(base, workdir) as target:
        settings = run_settings(base, home=workdir / "home", bootstrap=target.bootstrap, tag="api")
        args.workdir = str(workdir)
        from streams.topics import ensure_pipeline_topics

        asyncio.run(ensure_pipeline_topics(settings, target.kafka))
        print(f"kafka: {target.description}")
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        ids: list[str] = []
        next_offset = [0] * PARTITIONS
        for size in sizes:
            added, fill_s = fill(settings, size - len(ids), seed=2026 + len(ids), next_offset=next_offset)
            ids += added
            print(f"\nfilled the embedded warehouse up to {len(ids):,} traces ({len(added):,} in {fill_s:.1f} s: "
                  f"materializer row builder, direct insert of {FILL_CHUNK:,}-row batches): {parts(settings)} parts")
            if not args.no_merge:
                took = merge(settings)
                print(f"merged to {parts(settings)} part(s) in {took:.1f} s (OPTIMIZE FINAL: the state background "
                      "merges reach; --no-merge measures the unmerged parts)")
            copied, index_s = index(settings)
            print(f"trace index brought up to the warehouse: {copied:,} traces copied in {index_s:.1f} s "
                  f"({copied / max(index_s, 1e-9):,.0f}/s)")
            figures = asyncio.run(serve_and_load(settings, args, ids))
            figures["lookup_options"] = lookup_options(settings, ids)
            figures["uncached_pages"] = uncached_pages(settings)
            figures["fill_s"], figures["index_s"] = round(fill_s, 1), round(index_s, 1)
            runs[len(ids)] = figures
            report(len(ids), figures, args)
    report_scaling(runs)
    print(f"load average at end {load_average()}")
    emit_json("api_load", {"sizes": sorted(runs), "connections": args.connections, "seconds": args.seconds,
                            "merged": not args.no_merge, "runs": {str(n): f for n, f in runs.items()},
                            "machine": info})


if __name__ == "__main__":
    main()
