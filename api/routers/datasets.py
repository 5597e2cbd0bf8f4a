"""GET /api/datasets, /api/datasets/{name}, /api/datasets/{name}/export (streamed, the CLI's bytes)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from api.deps import KafkaDep, Readable, ReaderDep, SettingsDep
from api.errors import ERROR_SCHEMA, InvalidRequest, NotFound
from api.export import stream_export
from api.models import DatasetDetail, DatasetVersion
from api.queries import datasets as q
from dataset.catalog import load_catalog
from dataset.errors import UnknownDataset
from dataset.export import EXPORT_FORMATS
from dataset.parquet import PARQUET
from schemas.codec import AvroCodec
from schemas.registry import default_registry

router = APIRouter(prefix="/api/datasets", tags=["datasets"], dependencies=[Readable])

_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 404, 422)}
_NAME = Path(min_length=1, max_length=200, description="Dataset name.")


@router.get("", response_model=list[DatasetVersion], responses=_ERRORS, summary="Every dataset version")
async def list_datasets(reader: ReaderDep) -> list[dict]:
    """Every dataset version the warehouse knows, with its latest status, counts and manifest."""
    return await reader.run(q.versions)


@router.get("/{name}", response_model=DatasetDetail, responses=_ERRORS, summary="One dataset: manifests, counts, lineage")
async def get_dataset(reader: ReaderDep, name: Annotated[str, _NAME]) -> dict:
    """Every version of ``name``: manifest (offset ranges, filter, split), counts, and what each continues."""
    versions = await reader.run(lambda w: q.versions(w, name))
    if not versions:
        raise NotFound(f"no dataset named {name!r}; GET /api/datasets lists them, "
                       "`tracestream dataset create NAME` makes one", [{"field": "path.name", "message": "unknown dataset"}])
    lineage = [
        {"name": v["name"], "version": v["version"], "since": v["manifest"].get("parent"),
         "ranges": v["manifest"].get("ranges"), "topic": v["manifest"].get("topic")}
        for v in versions
    ]
    return {"name": name, "versions": versions, "lineage": lineage}


_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")


@router.get(
    "/{name}/export", responses={**_ERRORS, 200: {"content": {"application/x-ndjson": {},
                                                               "application/vnd.apache.parquet": {}},
                                                   "description": "JSON Lines or Parquet, the bytes "
                                                                  "`tracestream dataset export` writes."}},
    response_class=StreamingResponse, summary="A dataset as JSON Lines or Parquet, streamed",
)
async def export(
    reader: ReaderDep, settings: SettingsDep, kafka: KafkaDep, name: Annotated[str, _NAME],
    format: Annotated[str, Query(description=f"One of {', '.join(EXPORT_FORMATS)}.")] = "trace",
    split: Annotated[Literal["all", "train", "eval"], Query(description="train, eval or all.")] = "all",
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Default: the latest ready version.")] = None,
    source: Annotated[Literal["kafka", "warehouse"], Query(description="Replay the log, or read ClickHouse.")] = "kafka",
) -> StreamingResponse:
    """The same bytes as ``tracestream dataset export NAME[@VERSION] --format --split --source``."""
    if format not in EXPORT_FORMATS:
        raise InvalidRequest(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}",
                             [{"field": "query.format", "message": f"one of {', '.join(EXPORT_FORMATS)}"}])
    codec = AvroCodec(default_registry())
    catalog = await load_catalog(kafka, settings.topics.datasets, codec)
    try:
        manifest = catalog.get(name, version).manifest
    except UnknownDataset as exc:
        raise NotFound(str(exc), [{"field": "path.name", "message": "no such ready dataset"}]) from exc
    parquet = format == PARQUET
    filename = f"{manifest.name}@{manifest.version}.{'trace' if parquet else format}.{split}." + (
        "parquet" if parquet else "jsonl")
    return StreamingResponse(
        stream_export(manifest, format, split, source=source, kafka=kafka, codec=codec,
                      warehouse=reader.runner() if source == "warehouse" else None),
        media_type="application/vnd.apache.parquet" if parquet else "application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                 "X-Dataset-Content-Sha256": manifest.content_sha256},
    )
