"""Entry point: `tracestream COMMAND`."""

from __future__ import annotations

import typer

from cli import dataset, demo, dlq, ingest, runs, stack, train, trainer, worker
from cli import models as models_cli
from cli import serve as serve_cli
from cli import subscribe as subscribe_cli
from cli import tune as tune_cli
from cli.common import console
from schemas.errors import TracestreamError


class _App(typer.Typer):
    """Our own errors (wrong password, no broker, bad settings) end a command with their message, not a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except TracestreamError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise SystemExit(1) from None


app = _App(no_args_is_help=True, add_completion=False, help="Reasoning traces from Kafka to training data.")
app.add_typer(stack.app, name="stack")
app.add_typer(dataset.app, name="dataset")
app.add_typer(runs.app, name="runs")
app.add_typer(models_cli.app, name="models")
app.add_typer(tune_cli.app, name="tune")
app.add_typer(dlq.app, name="dlq")
app.command()(ingest.generate)
app.command()(ingest.publish)
app.command(name="worker")(worker.worker)
app.command()(worker.stats)
app.command()(worker.rebuild)
app.command()(train.train)
app.command()(trainer.trainer)
app.command()(demo.demo)
app.command()(subscribe_cli.tail)
app.command()(subscribe_cli.lag)
app.command()(serve_cli.serve)

if __name__ == "__main__":
    app()
