"""The model registry as the warehouse holds it: models.events rows folded by the registry's own rules.

Each row keeps its whole ModelEvent, so the fold here is
``schemas.model_registry.Registry``, the one the CLI applies to the log:
the API and ``tracestream models`` cannot disagree on versions or stages.
A name's events share a partition (the name is the key), so (partition,
offset) order is log order.
"""

from __future__ import annotations

import json
from typing import Any

from api.queries import datasets, runs
from schemas.model_registry import Model, Registry
from warehouse.client import Warehouse

_SQL = "SELECT event, partition, offset FROM {db:Identifier}.models FINAL {where} ORDER BY partition, offset"


def registry(warehouse: Warehouse, name: str | None = None) -> Registry:
    """Every model (or just ``name``) folded from the `models` table."""
    params: dict[str, Any] = {"db": warehouse.database}
    where = ""
    if name is not None:
        where, params["name"] = "WHERE name = {name:String}", name
    folded = Registry()
    for event, partition, offset in warehouse.query(_SQL.replace("{where}", where), params):
        folded.apply(json.loads(event), partition, offset)
    return folded


def summaries(warehouse: Warehouse) -> list[dict[str, Any]]:
    """Each model: its latest version and the version holding each stage, by name."""
    return [_summary(model) for _, model in sorted(registry(warehouse).models.items())]


def _summary(model: Model) -> dict[str, Any]:
    latest = model.latest
    return {"name": model.name, "latest_version": latest.version if latest else None, "versions": len(model.versions),
            "stages": dict(sorted(model.stages.items())),
            "updated_at": max((str(e["at"]) for v in model.versions.values()
                               for e in [{"at": v.registered_at}, *v.history, *v.gates]), default=None)}


def detail(warehouse: Warehouse, name: str) -> dict[str, Any] | None:
    """A model's versions (newest first), each with its lineage (run, dataset offsets and counts) and gates."""
    model = registry(warehouse, name).models.get(name)
    if model is None:
        return None
    manifests: dict[str, dict[int, dict[str, Any]]] = {}
    versions = []
    for number in sorted(model.versions, reverse=True):
        version = model.versions[number]
        found = runs.summaries(warehouse, version.run_id)
        run = found[0] if found else {"run_id": version.run_id, "status": "unknown"}
        d = version.dataset
        if d.get("name") not in manifests:
            manifests[d.get("name")] = {v["version"]: v["manifest"] for v in datasets.versions(warehouse, d.get("name"))}
        manifest = manifests[d.get("name")].get(d.get("version"), {})
        lineage = {
            "run": {k: run.get(k) for k in ("run_id", "status", "steps", "loss", "started_at", "updated_at")},
            "dataset": {**d, "topic": manifest.get("topic"), "ranges": manifest.get("ranges", []),
                        "record_count": manifest.get("record_count"), "train_count": manifest.get("train_count")},
        }
        versions.append({**version.as_json(), "lineage": lineage})
    return {**_summary(model), "versions_detail": versions}
