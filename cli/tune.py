"""`tracestream tune DATASET --space space.json --samples N`, `tune show TUNE_ID`, `tune cancel TUNE_ID`.

A tune is trials on Ray Tune, each a training run on runs.events sharing a
tune_id; the space and the bounds are checked before Ray starts or anything
is published. Ctrl-C, or `tune cancel` from anywhere, cancels every trial.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from cli.common import Column, console, fit_table, load_settings, out, require_kafka
from cli.train import _dataset_ref, _read_config
from schemas.codec import AvroCodec
from schemas.errors import TracestreamError
from schemas.registry import default_registry
from trainer.tune_space import (
    METRICS,
    SpaceError,
    best_trial,
    check_bounds,
    parse_space,
    tune_status,
)


class _RunByDefault(TyperGroup):
    """`tune DATASET ...` is `tune run DATASET ...`: the group's commands are named words, anything else a dataset."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args.insert(0, "run")
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                  help="Hyperparameter tuning on Ray Tune: `tune DATASET --space space.json --samples N`.")


def _read_space(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpaceError(f"cannot read --space {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise SpaceError(f"--space {path} is not valid JSON: {exc}") from exc


async def _ready_dataset(settings, kafka, name: str, version: int | None) -> None:
    """UnknownDataset unless ``name`` (at ``version``) is ready on datasets.events."""
    from dataset.catalog import load_catalog
    from streams.topics import ensure_pipeline_topics

    await ensure_pipeline_topics(settings, kafka)
    (await load_catalog(kafka, settings.topics.datasets, AvroCodec(default_registry()))).get(name, version)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print(outcome: dict[str, Any]) -> None:
    best = outcome["best"]
    rows = [[("* " if best and t["run_id"] == best["run_id"] else "") + t["run_id"], t["status"],
             json.dumps(t["params"], sort_keys=True) if t["params"] else "", str(t["steps"]), _number(t["loss"]),
             _number(t["eval_loss"]), _number(t["exact_match"])] for t in outcome["trials"]]
    columns = [Column("run_id", "id"), Column("status"), Column("params", "text"), Column("steps", justify="right"),
               Column("loss", justify="right"), Column("eval_loss", justify="right", optional=True),
               Column("exact_match", justify="right", optional=True)]
    out.print(fit_table(f"tune {outcome['tune_id']}: {outcome['status']}", columns, rows))
    for trial in outcome["trials"]:
        if trial["status"] == "failed":
            out.print(f"run {trial['run_id']} failed: {trial['error']}", highlight=False)
    if best is None:
        out.print(f"no best trial: no trial completed with a {outcome['metric']}")
        return
    out.print(f"best ({outcome['metric']}, {outcome['mode']}): run {best['run_id']} {outcome['metric']} "
              f"{_number(best[outcome['metric']])} with {json.dumps(best['params'], sort_keys=True)}")
    if best["checkpoint"]:
        out.print(f"checkpoint: {best['checkpoint']}")
    for output in best["outputs"] or []:
        out.print(f"{output['kind']}: {output['path']}")


@app.command()
def run(
    dataset: str = typer.Argument(..., help="Dataset to tune on: NAME or NAME@VERSION (default: latest ready)."),
    space: Path = typer.Option(
        ..., "--space",
        help='JSON file: {"train.learning_rate": {"loguniform": [1e-4, 1e-2]}, "model.d_model": {"choice": [32, 64]}}; '
             "distributions choice, uniform, loguniform, randint ([low, high)) over any run-config field.",
    ),
    samples: int = typer.Option(..., "--samples", "-n", help="Trials to sample, 1 to 100."),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", help="Trials at once (default: as Ray fits)."),
    config: Path | None = typer.Option(None, "--config", help="Base run config (as for `train --config`)."),
    metric: str = typer.Option("eval_loss", "--metric", help=f"What picks the best trial: {', '.join(METRICS)}."),
    mode: str | None = typer.Option(None, "--mode", help="min or max (default: min for losses, max for exact_match)."),
    grace_period: int | None = typer.Option(None, "--grace-period",
                                            help="ASHA's first rung in steps (default: a tenth of the steps)."),
    reduction_factor: int = typer.Option(3, "--reduction-factor", help="ASHA keeps the best 1/N at each rung."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the sampling (the same seed, the same configs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Tune on Ray Tune: each trial a training run with its events; ASHA stops weak trials; the best is reported."""
    settings = load_settings()
    try:
        name, version = _dataset_ref(dataset)
        mode = check_bounds(samples, max_concurrent, metric, mode)
        if grace_period is not None and grace_period < 1:
            raise SpaceError(f"--grace-period must be 1 or more, got {grace_period}")
        if reduction_factor < 2:
            raise SpaceError(f"--reduction-factor must be 2 or more, got {reduction_factor}")
        checked = parse_space(_read_space(space), _read_config(config))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    kafka = require_kafka(settings)
    try:  # a dataset that is not ready would fail every trial: refuse it before Ray starts
        asyncio.run(_ready_dataset(settings, kafka, name, version))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    from trainer.tune import (  # Ray and JAX: seconds to import, only once the input is good
        TuneRequest,
        run_tune,
    )

    request = TuneRequest(name, version, checked, samples, metric, mode, max_concurrent, grace_period,
                          reduction_factor, seed)
    console.print(f"tune {request.tune_id}: {samples} trial(s) on {name}; Ctrl-C or "
                  f"`tracestream tune cancel {request.tune_id}` cancels it", highlight=False)
    outcome = run_tune(settings, kafka, request).as_dict()
    if as_json:
        out.print_json(json.dumps(outcome))
    else:
        _print(outcome)
    if outcome["status"] == "cancelled":
        raise typer.Exit(3)


@app.command()
def show(
    tune_id: str = typer.Argument(..., help="The tune's id (printed when it started)."),
    metric: str = typer.Option("eval_loss", "--metric", help=f"What picks the best trial: {', '.join(METRICS)}."),
    mode: str | None = typer.Option(None, "--mode", help="min or max (default: the metric's natural one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A tune's trials and its best, folded from runs.events."""
    from trainer.tune import trial_summaries, tune_histories

    settings = load_settings()
    try:
        mode = check_bounds(1, None, metric, mode)
    except SpaceError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    kafka = require_kafka(settings)
    histories = asyncio.run(tune_histories(kafka, settings.topics.runs, AvroCodec(default_registry()), tune_id))
    if not histories:
        console.print(f"[red]error:[/red] no run of tune {tune_id!r} on {settings.topics.runs}", highlight=False)
        raise typer.Exit(2)
    trials = trial_summaries(histories)
    outcome = {"tune_id": tune_id, "status": tune_status([t["status"] for t in trials]), "metric": metric, "mode": mode,
               "best": best_trial(trials, metric, mode), "trials": trials}
    if as_json:
        out.print_json(json.dumps(outcome))
    else:
        _print(outcome)


@app.command()
def cancel(tune_id: str = typer.Argument(..., help="The tune's id.")) -> None:
    """Cancel a running tune: its trials stop and publish cancelled; trials not yet started never start."""
    from trainer.tune import request_tune_cancel

    settings = load_settings()
    kafka = require_kafka(settings)
    try:
        asked = asyncio.run(request_tune_cancel(kafka, settings.topics.runs, AvroCodec(default_registry()), tune_id))
    except TracestreamError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    out.print(f"cancel requested for tune {tune_id} ({len(asked)} running trial(s)); "
              "each publishes `cancelled` when it has stopped")


__all__ = ["app"]
