"""`tracestream models register|list|show|promote|archive|gate`: the model registry on models.events.

Every command reads the log (not the warehouse), refuses bad input with exit
code 2 before publishing anything, and prints JSON with ``--json``. ``gate``
exits 0 when the candidate passes and 1 when it regresses, so it can stand
in a CI pipeline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import typer

from cli.common import Column, console, fit_table, load_settings, out, require_kafka
from schemas.errors import TracestreamError
from schemas.model_registry import HIGHER_IS_BETTER, ModelVersion, parse_ref
from trainer import registry as models

app = typer.Typer(no_args_is_help=True, help="The model registry: versions, stages, lineage and regression gates.")

_JSON = typer.Option(False, "--json", help="Print JSON.")
_BY = typer.Option(None, "--by", help="Who does this (kept on the event).")
_REASON = typer.Option(None, "--reason", help="Why (kept on the event).")


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a registry action; bad input ends the command with its message and exit code 2."""
    try:
        return asyncio.run(coro)
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _ref(text: str, *, need_version: bool):
    try:
        return parse_ref(text, need_version=need_version)
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _said(version: ModelVersion, as_json: bool, line: str) -> None:
    if as_json:
        out.print_json(json.dumps(version.as_json()))
    else:
        out.print(line, highlight=False)


@app.command()
def register(
    run_id: str = typer.Argument(..., help="A completed run (`tracestream runs list`): its id, a unique prefix, "
                                               "or the shortened id the table shows."),
    name: str = typer.Option(..., "--name", help="Model name; the run becomes its next version."),
    as_json: bool = _JSON,
) -> None:
    """Register a completed run as the next version of NAME (its dataset and artifacts are checked first)."""
    from cli.runs import resolve_run
    from schemas.codec import AvroCodec
    from schemas.registry import default_registry
    from trainer.runlog import run_histories

    settings = load_settings()
    kafka = require_kafka(settings)
    run_id = resolve_run(settings, run_id, _run(run_histories(kafka, settings.topics.runs,
                                                              AvroCodec(default_registry()))))
    version = _run(models.register(settings, kafka, run_id, name))
    _said(version, as_json, f"registered run {run_id} as {version.name}@{version.version}")


@app.command(name="list")
def list_models(as_json: bool = _JSON) -> None:
    """Every model: its latest version and the version in each stage."""
    settings = load_settings()
    registry = _run(models.load_registry(require_kafka(settings), settings.topics.models))
    rows = [{"name": m.name, "latest_version": m.latest.version if m.latest else None, "versions": len(m.versions),
             "stages": dict(sorted(m.stages.items()))} for _, m in sorted(registry.models.items())]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    columns = (Column("name", "text"), Column("latest"), Column("versions", justify="right"),
               Column("stages", "text"))
    out.print(fit_table("models", columns, (
        [row["name"], f"v{row['latest_version']}", str(row["versions"]),
         ", ".join(f"{stage}: v{v}" for stage, v in row["stages"].items())] for row in rows)))


@app.command()
def show(
    model: str = typer.Argument(..., help="NAME (the latest version), NAME@VERSION or NAME@STAGE."),
    as_json: bool = _JSON,
) -> None:
    """A version with its lineage: run → dataset → its exact Kafka offset ranges → trace count; stages and gates."""
    settings = load_settings()
    kafka = require_kafka(settings)
    ref = _ref(model, need_version=False)

    async def read() -> tuple[dict, dict]:
        registry = await models.load_registry(kafka, settings.topics.models)
        found = registry.resolve(ref)
        stages = dict(sorted(registry.model(found.name).stages.items()))
        return {**found.as_json(), "stages": stages}, await models.lineage(settings, kafka, found)

    version, lineage = _run(read())
    if as_json:
        out.print_json(json.dumps({**version, "lineage": lineage}))
        return
    d, run = lineage["dataset"], lineage["run"]
    out.print(f"{version['name']}@{version['version']}  stage: {version['stage'] or '-'}  "
              f"registered {version['registered_at']}", highlight=False)
    out.print(f"  run      {run['run_id']} ({run['status']}, {run['steps']} steps, final loss {run['final_loss']})",
              highlight=False)
    out.print(f"  dataset  {d['name']}@{d['version']} content_sha256 {d['content_sha256']}", highlight=False)
    for r in d["ranges"]:
        out.print(f"           {d['topic']}[{r['partition']}] offsets [{r['start']}, {r['end']})", highlight=False)
    out.print(f"  traces   {d['record_count']} ({d['train_count']} train, {d['eval_count']} eval; "
              f"eval_sha256 {d['eval_sha256']})", highlight=False)
    for a in version["artifacts"]:
        out.print(f"  artifact {a['kind']} {a['path']} sha256 {a['sha256']} ({a['files']} files)", highlight=False)
    score = version["scorecard"]
    out.print("  scorecard " + ", ".join(f"{k} {score[k]}" for k in HIGHER_IS_BETTER if k in score), highlight=False)
    for h in version["history"]:
        out.print(f"  {h['at']} {h['event_type']} {h['stage'] or ''} by {h['by'] or '-'}: {h['reason'] or ''}",
                  highlight=False)
    for g in version["gates"]:
        verdict = "passed" if g["passed"] else "FAILED"
        out.print(f"  {g['at']} gate {verdict} vs {g['against_ref']}: {g['metric']} {g['candidate']} vs "
                  f"{g['baseline']} (drop {g['drop']:.4f}, max {g['max_drop']})", highlight=False)
    stages = ", ".join(f"{s}: v{v}" for s, v in version["stages"].items()) or "none"
    out.print(f"  stages of {version['name']}: {stages}", highlight=False)


@app.command()
def promote(
    model: str = typer.Argument(..., help="NAME@VERSION (or NAME@STAGE) to promote."),
    stage: str = typer.Option(..., "--stage", help="The stage it takes, e.g. staging or production."),
    by: str | None = _BY,
    reason: str | None = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Put a version in a stage, after re-hashing every artifact file (a changed file is refused, by name)."""
    settings = load_settings()
    ref = _ref(model, need_version=True)
    version = _run(models.promote(settings, require_kafka(settings), ref, stage, by=by, reason=reason))
    _said(version, as_json, f"promoted {version.name}@{version.version} to {stage}")


@app.command()
def archive(
    model: str = typer.Argument(..., help="NAME@VERSION to archive."),
    by: str | None = _BY,
    reason: str | None = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Take a version out of every stage for good."""
    settings = load_settings()
    ref = _ref(model, need_version=True)
    version = _run(models.archive(settings, require_kafka(settings), ref, by=by, reason=reason))
    _said(version, as_json, f"archived {version.name}@{version.version}")


@app.command()
def gate(
    model: str = typer.Argument(..., help="The candidate, NAME@VERSION."),
    against: str = typer.Option(..., "--against", help="The baseline, e.g. NAME@production or NAME@3."),
    metric: str = typer.Option("exact_match", "--metric", help=f"One of {', '.join(HIGHER_IS_BETTER)}."),
    max_drop: float = typer.Option(0.02, "--max-drop", help="Largest regression allowed, in the metric's units."),
    by: str | None = _BY,
    as_json: bool = _JSON,
) -> None:
    """Compare the candidate's scorecard with the baseline's on the same eval split; publish `gated`.

    Exit code 0: passed; 1: the candidate regressed by more than --max-drop; 2: bad input (nothing published).
    """
    settings = load_settings()
    candidate, baseline = _ref(model, need_version=True), _ref(against, need_version=True)
    ours, theirs, outcome = _run(models.gate(settings, require_kafka(settings), candidate, baseline,
                                             metric=metric, max_drop=max_drop, by=by))
    result = {"candidate": f"{ours.name}@{ours.version}", "against": f"{theirs.name}@{theirs.version}",
              "metric": outcome.metric, "candidate_value": outcome.candidate, "baseline_value": outcome.baseline,
              "drop": outcome.drop, "max_drop": outcome.max_drop, "passed": outcome.passed,
              "eval_sha256": outcome.eval_sha256}
    if as_json:
        out.print_json(json.dumps(result))
    else:
        verdict = "passed" if outcome.passed else "FAILED"
        out.print(f"gate {verdict}: {result['candidate']} {metric} {outcome.candidate:.4f} vs {result['against']} "
                  f"{outcome.baseline:.4f} (drop {outcome.drop:.4f}, max {outcome.max_drop})", highlight=False)
    if not outcome.passed:
        raise typer.Exit(1)
