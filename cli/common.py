"""What every command needs: the settings, the Kafka clients, a console, tables that fit it."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from deploy.stack import kafka_clients
from schemas.errors import ConfigurationError

console = Console(stderr=True)
out = Console()


def load_settings() -> Settings:
    return Settings()


def require_kafka(settings: Settings) -> KafkaClients:
    """The clients for the configured cluster or the running local broker, with the settings' security."""
    try:
        kafka = kafka_clients(settings)
    except ConfigurationError as exc:  # e.g. SASL_SSL without a mechanism: say which setting, exit 2
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if kafka is None:
        console.print(
            "[red]No Kafka broker.[/red] Start the local stack with `tracestream stack up`, "
            "or point TRACESTREAM_KAFKA_BOOTSTRAP at your cluster (host:port)."
        )
        raise typer.Exit(2)
    return kafka


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # a library may have configured the root logger while being imported
    )


def command_line(settings: Settings, *args: str) -> str:
    """``tracestream ARGS`` as the user can paste it here: this install's command, this home."""
    exe = Path(sys.executable).parent / "tracestream"
    found = shutil.which("tracestream")
    program = "tracestream" if found and Path(found).resolve() == exe.resolve() else (
        _shortest(exe) if exe.exists() else f"{_shortest(Path(sys.executable))} -m cli.main")
    home = "" if settings.home == Settings.model_fields["home"].default else \
        f"TRACESTREAM_HOME={shlex.quote(str(settings.home))} "
    return home + " ".join([program, *(shlex.quote(a) for a in args)])


def _shortest(path: Path) -> str:
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if str(relative).startswith(".") else f"./{relative}"


def say_how_to_stop(settings: Settings, what: str) -> None:
    """The line every long-lived command prints: how to stop it, here and from another shell."""
    console.print(f"{what}: Ctrl-C stops it; from another shell `{command_line(settings, 'stack', 'stop', str(os.getpid()))}`"
                  f" (`{command_line(settings, 'stack', 'status')}` lists what runs)", highlight=False, soft_wrap=True)


# ---- tables


@dataclass(frozen=True)
class Column:
    """A table column and what may happen to it when the terminal is narrow."""

    name: str
    kind: str = "keep"
    """``keep``: never cut (statuses, counts, times); ``id``: shortened in the middle (``abcd…wxyz``, which
    ``resolve_id`` accepts); ``text``: wrapped onto more lines."""
    justify: str = "left"
    optional: bool = False
    """Left out (the rightmost first) when the others would not fit otherwise; ``--json`` has everything."""


_ID_MIN = 13  # 6 characters, the ellipsis, 6 characters
_TEXT_MIN = 8
_GAP = 2  # between columns (SIMPLE_HEAD box, no edge, collapsed padding)
ELLIPSIS = "…"


def shorten_middle(text: str, width: int) -> str:
    """``text`` in ``width`` characters: its head and tail around an ellipsis (both kept: ids differ at either end)."""
    if len(text) <= width:
        return text
    head = max(1, width // 2)
    tail = max(0, width - 1 - head)
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def fit_table(title: str, columns: Sequence[Column], rows: Iterable[Sequence[str]], width: int | None = None) -> Table:
    """A table no wider than ``width`` (the terminal's): ``keep`` columns whole, ids shortened, text wrapped."""
    width = width or out.width
    rows = [list(row) for row in rows]
    chosen = list(range(len(columns)))

    def natural(i: int) -> int:
        return max([len(columns[i].name), *(len(row[i]) for row in rows)])

    tight = False  # a very narrow terminal: ids down to 4…4, text to 4 characters a line

    def minimum(i: int) -> int:
        kind = columns[i].kind
        floor = {"id": 9 if tight else _ID_MIN, "text": 4 if tight else max(_TEXT_MIN, len(columns[i].name))}.get(kind)
        return natural(i) if floor is None else min(natural(i), floor)

    def fits(indices: list[int]) -> bool:
        return sum(minimum(i) for i in indices) + _GAP * (len(indices) - 1) <= width

    while not fits(chosen) and any(columns[i].optional for i in chosen):
        chosen.remove(max(i for i in chosen if columns[i].optional))
    tight = not fits(chosen)
    widths = {i: minimum(i) for i in chosen}
    spare = width - sum(widths.values()) - _GAP * (len(chosen) - 1)
    for kind in ("text", "id"):  # what is left goes to wrapped text first (a shortened id reads fine already)
        growing = [i for i in chosen if columns[i].kind == kind and widths[i] < natural(i)]
        while spare > 0 and growing:  # a character at a time, in turn
            for i in list(growing):
                if spare == 0:
                    break
                widths[i] += 1
                spare -= 1
                if widths[i] >= natural(i):
                    growing.remove(i)
    left_out = [columns[i].name for i in range(len(columns)) if i not in chosen]
    caption = f"left out to fit {width} columns: {', '.join(left_out)} (--json has them)" if left_out else None
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    cells: list[list[str]] = [[] for _ in rows]
    for i in chosen:
        column = columns[i]
        values = [row[i] for row in rows]
        if column.kind == "id":
            short = [shorten_middle(v, widths[i]) for v in values]
            if len(set(short)) == len(set(values)):  # still tells every row apart, so it can be pasted
                values = short
                table.add_column(column.name, justify=column.justify, width=widths[i], no_wrap=True)
            else:  # shortened, two ids would read the same: wrap them whole instead
                table.add_column(column.name, justify=column.justify, width=widths[i], overflow="fold")
        elif column.kind == "text":
            table.add_column(column.name, justify=column.justify, width=widths[i], overflow="fold")
        else:
            table.add_column(column.name, justify=column.justify, width=widths[i], no_wrap=True)
        for cell, value in zip(cells, values):
            cell.append(value)
    for cell in cells:
        table.add_row(*cell)
    return table


_NUMBERS = {"count", "trace_version", "schema_version", "partition", "committed", "end", "lag"}


def records_table(title: str, columns: Sequence[str], rows: Iterable[dict]) -> Table:
    """``fit_table`` of dicts: the numeric fields kept whole and right-aligned, the names wrapped."""
    return fit_table(title, [Column(c, justify="right") if c in _NUMBERS else Column(c, "text") for c in columns],
                     ([str(row[c]) for c in columns] for row in rows))


def lag_table(rows: Iterable[dict]) -> Table:
    """Committed offset, end and lag per group and partition (`tracestream stats` and `tracestream lag`)."""
    return records_table("consumer lag", ["group", "topic", "partition", "committed", "end", "lag"], rows)


class UnknownId(LookupError):
    """No id matches what was given."""


class AmbiguousId(LookupError):
    """More than one id matches what was given."""


def resolve_id(given: str, ids: Iterable[str], what: str) -> str:
    """The one id that ``given`` names: the id itself, a unique prefix, or ``head…tail`` as a table shows it.

    Raises:
        UnknownId: none matches.
        AmbiguousId: several match (the message lists them).
    """
    ids = sorted(set(ids))
    if given in ids:
        return given
    head, sep, tail = given.replace("...", ELLIPSIS).partition(ELLIPSIS)
    matches = [i for i in ids if i.startswith(head) and (not sep or (i.endswith(tail) and len(i) >= len(head + tail)))]
    if not given.strip() or not matches:
        raise UnknownId(f"no {what} {given!r}")
    if len(matches) > 1:
        raise AmbiguousId(f"{given} matches {len(matches)} {what}s: {', '.join(matches)}; give more of the id")
    return matches[0]
