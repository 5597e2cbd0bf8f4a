"""Tunes folded from the materialized run events: a tune is the runs that share a ``tune_id`` (RunEvent v4).

Each trial's status, steps and scorecard come from the runs fold
(``api.queries.runs.summaries``, the same rule as every run); its config
and last checkpoint from its events; its loss curve from ``run_metrics``.
The best trial is picked by ``trainer.tune_space.best_trial``, the rule the
CLI reports with.
"""

from __future__ import annotations

import json
from typing import Any

from api.queries import runs as q_runs
from trainer.tune_space import best_trial, tune_status, varied_fields
from warehouse.client import Warehouse

_LIST_SQL = """
SELECT tune_id, uniqExact(run_id) AS trials, min(at) AS started_at, max(at) AS updated_at
FROM {db:Identifier}.runs FINAL WHERE tune_id IS NOT NULL GROUP BY tune_id ORDER BY started_at, tune_id
"""

_TRIALS_SQL = """
SELECT run_id, argMinIf(config, offset, config != '') AS config,
       argMaxIf(checkpoint_path, offset, checkpoint_path IS NOT NULL) AS checkpoint
FROM {db:Identifier}.runs FINAL WHERE tune_id = {tune_id:String} GROUP BY run_id
"""

_CURVES_SQL = """
SELECT run_id, step, loss FROM {db:Identifier}.run_metrics FINAL
WHERE run_id IN (SELECT run_id FROM {db:Identifier}.runs WHERE tune_id = {tune_id:String})
ORDER BY run_id, partition, offset
"""


def listing(warehouse: Warehouse) -> list[dict[str, Any]]:
    """Every tune: its id, how many trials, when it started and last changed; oldest first."""
    return [{"tune_id": tune_id, "trials": trials, "started_at": q_runs._iso(started),
             "updated_at": q_runs._iso(updated)}
            for tune_id, trials, started, updated in warehouse.query(_LIST_SQL, {"db": warehouse.database})]


def tune(warehouse: Warehouse, tune_id: str, metric: str, mode: str) -> dict[str, Any] | None:
    """The tune's trials (status, config, the fields the trials differ in, scores, loss curve) and its best;
    None when no run carries ``tune_id``."""
    params = {"db": warehouse.database, "tune_id": tune_id}
    extra = {run_id: (json.loads(config) if config else {}, checkpoint)
             for run_id, config, checkpoint in warehouse.query(_TRIALS_SQL, params)}
    if not extra:
        return None
    curves: dict[str, list[dict[str, Any]]] = {}
    for run_id, step, loss in warehouse.query(_CURVES_SQL, params):
        curves.setdefault(run_id, []).append({"step": step, "loss": loss})
    trials = []
    for run in sorted(q_runs.summaries(warehouse, tune_id=tune_id), key=lambda r: r["run_id"]):
        config, checkpoint = extra.get(run["run_id"], ({}, None))
        card = run["scorecard"] or {}
        trials.append({
            "run_id": run["run_id"], "status": run["status"], "config": config, "steps": run["steps"],
            "loss": run["loss"], "eval_loss": card.get("loss"), "exact_match": card.get("exact_match"),
            "checkpoint": checkpoint, "error": run["error"] if run["status"] != "completed" else None,
            "started_at": run["started_at"], "updated_at": run["updated_at"], "curve": curves.get(run["run_id"], []),
        })
    for trial, fields in zip(trials, varied_fields([t["config"] for t in trials])):
        trial["params"] = fields
    best = best_trial(trials, metric, mode)
    return {"tune_id": tune_id, "status": tune_status([t["status"] for t in trials]), "metric": metric, "mode": mode,
            "best": None if best is None else best["run_id"], "trials": trials}
