"""Training runs folded from their events: status, latest metrics, scorecard, events in order.

A run's events share a partition (run_id is the key), so (partition, offset)
is the order they happened in. Event types this API does not know (newer
trainers add some) are listed as they are and never change a run's status.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.timeutil import iso_millis
from trainer.runlog import ACTIVE, CANCEL_REQUESTED, FINISHED, run_status
from warehouse.client import Warehouse

_SUMMARY_SQL = """
SELECT r.run_id AS run_id, r.dataset_name AS dataset_name, r.dataset_version AS dataset_version,
       r.dataset_sha256 AS dataset_sha256, r.workers AS workers, r.seed AS seed, r.started_at AS started_at,
       r.updated_at AS updated_at, r.terminal AS terminal, r.active AS active, r.cancel_requested AS cancel_requested, r.last_event AS last_event,
       r.scorecard AS scorecard, r.error AS error, m.steps AS steps, m.loss AS loss
FROM (
    SELECT run_id, argMin(dataset_name, offset) AS dataset_name, argMin(dataset_version, offset) AS dataset_version,
           argMin(dataset_sha256, offset) AS dataset_sha256, max(workers) AS workers, argMin(seed, offset) AS seed,
           min(at) AS started_at, max(at) AS updated_at,
           argMaxIf(event_type, offset, event_type IN {terminal:Array(String)}) AS terminal,
           countIf(event_type IN {active:Array(String)}) AS active,
           countIf(event_type = {cancel:String}) AS cancel_requested,
           argMax(event_type, offset) AS last_event,
           argMaxIf(scorecard, offset, scorecard IS NOT NULL) AS scorecard,
           argMaxIf(error, offset, error IS NOT NULL) AS error
    FROM {db:Identifier}.runs FINAL WHERE {where} GROUP BY run_id
) AS r
LEFT JOIN (
    SELECT run_id, max(step) AS steps, argMax(loss, (step, offset)) AS loss
    FROM {db:Identifier}.run_metrics FINAL WHERE {where} GROUP BY run_id
) AS m ON r.run_id = m.run_id
ORDER BY started_at, run_id
"""

_EVENTS_SQL = """
SELECT r.partition AS partition, r.offset AS offset, r.event_type AS event_type, r.at AS at,
       r.checkpoint_step AS checkpoint_step, r.checkpoint_path AS checkpoint_path,
       r.checkpoint_sha256 AS checkpoint_sha256, r.scorecard AS scorecard, r.error AS error,
       m.step AS step, m.loss AS loss, m.learning_rate AS learning_rate, m.grad_norm AS grad_norm,
       m.tokens_per_s AS tokens_per_s, m.run_id != '' AS has_metrics
FROM (
    SELECT * FROM {db:Identifier}.runs FINAL
    WHERE run_id = {run_id:String} AND (partition, offset) > ({p:UInt32}, {o:Int64}) {types}
) AS r
LEFT JOIN (
    SELECT * FROM {db:Identifier}.run_metrics FINAL WHERE run_id = {run_id:String}
) AS m ON r.topic = m.topic AND r.partition = m.partition AND r.offset = m.offset
ORDER BY r.partition, r.offset
LIMIT {limit:UInt32}
"""

_METRICS_SQL = (
    "SELECT step, loss, learning_rate, grad_norm, tokens_per_s, at FROM {db:Identifier}.run_metrics FINAL "
    "WHERE run_id = {run_id:String} ORDER BY partition, offset"
)


def _iso(value: Any) -> str | None:
    return None if value is None else iso_millis(value)


def summaries(warehouse: Warehouse, run_id: str | None = None, *, tune_id: str | None = None) -> list[dict[str, Any]]:
    """One summary per run (or just ``run_id``, or the trials of ``tune_id``), oldest first."""
    params: dict[str, Any] = {"db": warehouse.database, "terminal": sorted(FINISHED), "active": sorted(ACTIVE),
                              "cancel": CANCEL_REQUESTED}
    where = "1"
    if run_id is not None:
        where, params["run_id"] = "run_id = {run_id:String}", run_id
    elif tune_id is not None:
        where = "run_id IN (SELECT run_id FROM {db:Identifier}.runs WHERE tune_id = {tune_id:String})"
        params["tune_id"] = tune_id
    rows = warehouse.query(_SUMMARY_SQL.replace("{where}", where), params)
    out = []
    for (rid, ds_name, ds_version, ds_sha, workers, seed, started, updated, terminal, active, cancel, last_event,
         scorecard, error, steps, loss) in rows:
        card = json.loads(scorecard) if scorecard else None
        out.append({
            "run_id": rid, "status": run_status(terminal, bool(cancel), bool(active)), "last_event": last_event,
            "dataset": {"name": ds_name, "version": ds_version, "content_sha256": ds_sha},
            "workers": workers, "seed": seed, "steps": steps or 0, "loss": loss if steps else None,
            "exact_match": card.get("exact_match") if card else None, "scorecard": card,
            "error": error or None, "started_at": _iso(started), "updated_at": _iso(updated),
        })
    return out


def events(warehouse: Warehouse, run_id: str, *, after: tuple[int, int] = (0, -1), limit: int = 10_000,
           with_metrics: bool = True) -> list[dict[str, Any]]:
    """The run's events after (partition, offset) ``after``, in the order they happened."""
    types = "" if with_metrics else "AND event_type != 'metrics'"
    params = {"db": warehouse.database, "run_id": run_id, "p": after[0], "o": after[1], "limit": limit}
    out = []
    for (partition, offset, event_type, at, ck_step, ck_path, ck_sha, scorecard, error, step, loss, lr, grad_norm,
         tokens_per_s, has_metrics) in warehouse.query(_EVENTS_SQL.replace("{types}", types), params):
        event: dict[str, Any] = {"event_type": event_type, "at": _iso(at), "partition": partition, "offset": offset}
        if has_metrics:
            event["metrics"] = {"step": step, "loss": loss, "learning_rate": lr, "grad_norm": grad_norm,
                                "tokens_per_s": tokens_per_s}
        if ck_step is not None:
            event["checkpoint"] = {"step": ck_step, "path": ck_path, "sha256": ck_sha}
        if scorecard is not None:
            event["scorecard"] = json.loads(scorecard)
        if error is not None:
            event["error"] = error
        out.append(event)
    return out


def metrics(warehouse: Warehouse, run_id: str) -> list[dict[str, Any]]:
    """The run's metrics points in the order they were published (the loss curve)."""
    return [
        {"step": step, "loss": loss, "learning_rate": lr, "grad_norm": gn, "tokens_per_s": tps, "at": _iso(at)}
        for step, loss, lr, gn, tps, at in warehouse.query(_METRICS_SQL, {"db": warehouse.database, "run_id": run_id})
    ]
