"""`tracestream train DATASET[@VERSION] [--workers N]`: one training run, announced on runs.events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from cli.common import console, load_settings, out, require_kafka
from schemas.errors import TracestreamError
from streams.topics import ensure_pipeline_topics
from trainer.config import ConfigError


def _dataset_ref(text: str) -> tuple[str, int | None]:
    """NAME or NAME@VERSION (no version: the latest ready one)."""
    name, sep, version = text.partition("@")
    if not name or (sep and not version.isdigit()) or (sep and int(version) < 1):
        raise ConfigError(f"dataset must be NAME or NAME@VERSION (VERSION >= 1), got {text!r}")
    return name, int(version) if sep else None


def _read_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f'--config {path} must hold a JSON object like {{"preset": "tiny", "train": {{...}}}}')
    return value


def train(
    dataset: str = typer.Argument(..., help="Dataset to train on: NAME or NAME@VERSION (default: latest ready)."),
    config: Path | None = typer.Option(
        None, "--config",
        help='JSON file: {"preset": "tiny"|"small", "model": {...}, "train": {...}} for the byte-level model, or '
             '{"base_model": {"path": DIR}, "lora": {"rank": 8, "alpha": 16}, "train": {"max_len": 512, ...}} to '
             'fine-tune a Hugging Face checkpoint directory (README: bring your own checkpoint).'
    ),
    run_id: str | None = typer.Option(None, "--run-id", help="Run id (default: a new uuid); reusing one resumes it."),
    workers: int = typer.Option(
        1, "--workers", "-w",
        help="Data-parallel workers: 1 trains in this process, more train on Ray actors (RAY_ADDRESS, or a local Ray).",
    ),
) -> None:
    """Train on a dataset (the byte-level LM, or a base model from its directory), publishing run events."""
    from trainer.run import (  # JAX and Orbax: ~1.5 s to import, only for this command
        RunCancelled,
        run_training,
    )

    settings = load_settings()
    kafka = require_kafka(settings)
    try:
        name, version = _dataset_ref(dataset)
        mapping = _read_config(config)
        asyncio.run(ensure_pipeline_topics(settings, kafka))
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        outcome = asyncio.run(run_training(settings, kafka, name, version, mapping, run_id=run_id,
                                           workers=workers))
    except RunCancelled as exc:
        console.print(f"[yellow]run cancelled:[/yellow] {exc}")
        raise typer.Exit(3) from None
    except TracestreamError as exc:
        console.print(f"[red]training failed:[/red] {exc}")
        raise typer.Exit(1) from None
    card = outcome.scorecard
    loss = "n/a" if outcome.final_loss is None else f"{outcome.final_loss:.4f}"
    exact = (f"{card.get('exact_match', 0.0):.3f} on {card.get('items', 0)} eval items"
             if card.get("items") else "n/a (empty eval split)")
    restarts = f", {outcome.restarts} restart(s) after a worker died" if outcome.restarts else ""
    out.print(f"run {outcome.run_id} {outcome.status}: {outcome.steps} steps on {outcome.workers} worker(s){restarts}, "
              f"final loss {loss}, exact match {exact}")
    if outcome.checkpoint is not None:
        out.print(f"checkpoint: {outcome.checkpoint}")


__all__ = ["train"]
