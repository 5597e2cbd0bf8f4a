"""`tracestream dataset create|list|show|diff|export`: datasets as Kafka offset ranges."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import typer

from cli.common import Column, console, fit_table, load_settings, out, require_kafka
from dataset.catalog import load_catalog
from dataset.export import EXPORT_FORMATS, dataset_records, export_dataset, own_thread
from dataset.filter import parse_filter
from dataset.manifest import DatasetRef, Manifest
from dataset.ranges import parse_offsets_json
from dataset.reader import content_mismatch
from dataset.select import select
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import parse_split
from deploy.kafka_clients import KafkaClients
from schemas.codec import AvroCodec
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from streams.topics import ensure_pipeline_topics
from warehouse.client import Warehouse

app = typer.Typer(no_args_is_help=True, help="Datasets: exact Kafka offset ranges of traces.valid, replayable byte for byte.")


def _fail(exc: TracestreamError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def _ref(text: str) -> DatasetRef:
    """NAME or NAME@VERSION (version 0 means the latest ready one)."""
    name, _, version = text.partition("@")
    return DatasetRef(name, int(version) if version else 0)


@app.command()
def create(
    name: str = typer.Argument(..., help="Dataset name."),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: the next free version."),
    filters: list[str] = typer.Option([], "--filter", "-f", help="source=a,b | trace_version=1 | meta.K=V | "
                                      "created_from=ISO | created_until=ISO | steps>=N | steps<=N | score>=X | score<=X"),
    split: str = typer.Option("eval=0.0", "--split", help="Share of records in the eval split, e.g. eval=0.1."),
    from_offsets: str | None = typer.Option(None, "--from-offsets", help='Explicit ranges: {"0": [start, end], ...}'),
    since: str | None = typer.Option(None, "--since", help="Incremental: everything after DATASET[@VERSION]."),
    timeout_s: float = typer.Option(120.0, "--timeout", help="How long to wait for the materializer."),
) -> None:
    """Snapshot traces.valid into a dataset: wait for the warehouse, hash it, announce it ready."""
    settings = load_settings()
    kafka = require_kafka(settings)
    codec = AvroCodec(default_registry())
    try:
        request = DatasetRequest(
            name=name, version=version, filter=parse_filter(filters), split=parse_split(split),
            from_offsets=parse_offsets_json(from_offsets, settings.topics.valid) if from_offsets else None,
            since=_ref(since) if since else None,
        )
        asyncio.run(ensure_pipeline_topics(settings, kafka))
        manifest = asyncio.run(create_dataset(
            settings, kafka, request, codec, wait_timeout_s=timeout_s,
            warn=lambda message: console.print(f"[yellow]warning:[/yellow] {message}"),
        ))
    except TracestreamError as exc:
        raise _fail(exc) from exc
    _print_manifest(manifest, "ready")


@app.command(name="list")
def list_datasets(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every dataset version announced on datasets.events."""
    settings = load_settings()
    catalog = asyncio.run(load_catalog(require_kafka(settings), settings.topics.datasets, AvroCodec(default_registry())))
    rows = [_summary(e.manifest, e.status) for e in catalog]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    columns = (Column("name", "text"), Column("version", justify="right"), Column("status"),
               *(Column(c, justify="right") for c in ("records", "train", "eval")), Column("content_sha256", "id"))
    out.print(fit_table("datasets", columns, ([row["name"], str(row["version"]), row["status"], str(row["record_count"]),
                                               str(row["train_count"]), str(row["eval_count"]),
                                               row["content_sha256"][:16]] for row in rows)))


@app.command()
def show(dataset: str = typer.Argument(..., help="NAME or NAME@VERSION.")) -> None:
    """A dataset's manifest: ranges, filter, split, lineage, counts and hash."""
    settings = load_settings()
    catalog = asyncio.run(load_catalog(require_kafka(settings), settings.topics.datasets, AvroCodec(default_registry())))
    ref = _ref(dataset)
    try:
        entry = catalog.get(ref.name, ref.version or None, ready=False)
    except TracestreamError as exc:
        raise _fail(exc) from exc
    _print_manifest(entry.manifest, entry.status, entry.error)


@app.command()
def diff(
    a: str = typer.Argument(..., help="NAME[@VERSION] of the old dataset."),
    b: str = typer.Argument(..., help="NAME[@VERSION] of the new dataset."),
    limit: int = typer.Option(20, "--limit", help="How many added/removed records to list."),
) -> None:
    """Records added and removed between two datasets, by offset and trace_id."""
    settings = load_settings()
    kafka = require_kafka(settings)
    codec = AvroCodec(default_registry())
    try:
        catalog = asyncio.run(load_catalog(kafka, settings.topics.datasets, codec))
        manifests = [catalog.get(r.name, r.version or None).manifest for r in (_ref(a), _ref(b))]
        old, new = (asyncio.run(_keys(m, kafka, codec)) for m in manifests)
    except TracestreamError as exc:
        raise _fail(exc) from exc
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    out.print(f"{a} → {b}: {len(added)} added, {len(removed)} removed, {len(new.keys() & old.keys())} in both")
    for sign, keys, source in (("+", added, new), ("-", removed, old)):
        for key in keys[:limit]:
            out.print(f"{sign} {key[0]}[{key[1]}]@{key[2]} {source[key]}")


async def _keys(manifest: Manifest, kafka: KafkaClients, codec: AvroCodec) -> dict[tuple[str, int, int], str]:
    keys = {}
    async for record in dataset_records(manifest, source="kafka", kafka=kafka, codec=codec):
        for _, selected in select((record,), manifest.filter, manifest.split, "all"):
            keys[(selected["topic"], selected["partition"], selected["offset"])] = selected["trace_id"]
    return keys


@app.command()
def export(
    dataset: str = typer.Argument(..., help="NAME or NAME@VERSION."),
    fmt: str = typer.Option("trace", "--format", help=f"One of: {', '.join(EXPORT_FORMATS)} (parquet: one row "
                            "per trace, steps as a list of structs)."),
    split: str = typer.Option("all", "--split", help="train, eval or all."),
    out_file: Path | None = typer.Option(None, "--out", "-o", help="Output file (default: stdout)."),
    source: str = typer.Option("kafka", "--source", help="kafka (replay the log) or warehouse (ClickHouse)."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, max=64, help="From Kafka: decode and format in this "
                                "many processes (0: in this one); worth it on a machine with cores to spare."),
) -> None:
    """Write a dataset as JSON Lines or Parquet; the same manifest always gives the same bytes, from either source."""
    if split not in ("all", "train", "eval") or source not in ("kafka", "warehouse") or fmt not in EXPORT_FORMATS:
        console.print(f"[red]error:[/red] --split is train|eval|all, --source kafka|warehouse, "
                      f"--format {'|'.join(EXPORT_FORMATS)}")
        raise typer.Exit(2)
    if workers and source != "kafka":
        console.print("[red]error:[/red] --workers is for --source kafka (the warehouse writes the export itself)")
        raise typer.Exit(2)
    settings = load_settings()
    kafka = require_kafka(settings)
    codec = AvroCodec(default_registry())
    try:
        catalog = asyncio.run(load_catalog(kafka, settings.topics.datasets, codec))
        ref = _ref(dataset)
        manifest = catalog.get(ref.name, ref.version or None).manifest
        warehouse = own_thread(Warehouse.connect(settings)) if source == "warehouse" else None
        sink = out_file.open("wb") if out_file else sys.stdout.buffer
        try:
            summary = asyncio.run(export_dataset(
                manifest, fmt, split, sink, source=source, kafka=kafka, codec=codec, warehouse=warehouse,
                workers=workers))
        finally:
            if out_file:
                sink.close()
    except TracestreamError as exc:
        raise _fail(exc) from exc
    if (why := content_mismatch(manifest, summary.content_sha256, source)) is not None:
        console.print(f"[red]error:[/red] {why}")
        raise typer.Exit(1)
    console.print(f"{summary.records} records, {summary.bytes_written} bytes, sha256 {summary.file_sha256}"
                  f"{f' → {out_file}' if out_file else ''}")


def _summary(manifest: Manifest, status: str) -> dict:
    return {"name": manifest.name, "version": manifest.version, "status": status,
            "record_count": manifest.record_count, "train_count": manifest.train_count,
            "eval_count": manifest.eval_count, "content_sha256": manifest.content_sha256}


def _print_manifest(manifest: Manifest, status: str, error: str | None = None) -> None:
    out.print(f"[bold]{manifest.name}@{manifest.version}[/bold] ({status}) from {manifest.topic}")
    for r in manifest.ranges:
        out.print(f"  partition {r.partition}: [{r.start}, {r.end})")
    out.print(f"  filter: {manifest.filter.describe()}")
    out.print(f"  split: eval={manifest.split.eval_share}")
    if manifest.parent:
        out.print(f"  since: {manifest.parent.name}@{manifest.parent.version}")
    out.print(f"  records: {manifest.record_count} (train {manifest.train_count}, eval {manifest.eval_count})")
    out.print(f"  content_sha256: {manifest.content_sha256}")
    if error:
        out.print(f"  [red]error:[/red] {error}")


