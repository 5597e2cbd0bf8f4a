"""Tables fit an 80-column terminal without cutting what matters, and the ids they shorten can be pasted back."""

from __future__ import annotations

import pytest
from rich.console import Console

from cli.common import (
    AmbiguousId,
    Column,
    UnknownId,
    fit_table,
    resolve_id,
    shorten_middle,
)

RUN_IDS = ["demo-144b0c07-v1-p0o3", "5f0e8a1c2b3d4e5f6a7b8c9d0e1f2a3b", "5f0e8a1c99999999999999999999ffff"]
COLUMNS = (
    Column("run_id", "id"), Column("status"), Column("dataset", "text"), Column("steps", justify="right"),
    Column("loss", justify="right"), Column("exact_match", justify="right"),
    Column("workers", justify="right", optional=True), Column("updated_at", optional=True),
)
ROWS = [
    [RUN_IDS[0], "completed", "demo-144b0c07@1", "30", "3.2460", "", "1", "2026-11-30 11:12Z"],
    [RUN_IDS[1], "cancelling", "arith-with-a-long-name@12", "800", "0.1234", "0.996", "2", "2026-11-30 11:13Z"],
    [RUN_IDS[2], "failed", "arith@12", "0", "", "", "2", "2026-11-30 11:14Z"],
]


def render(table, width: int) -> list[str]:
    console = Console(width=width, record=True)
    with console.capture() as capture:
        console.print(table)
    return capture.get().splitlines()


@pytest.mark.parametrize("width", [80, 60])
def test_statuses_and_counts_are_whole_and_no_line_is_wider_than_the_terminal(width: int):
    lines = render(fit_table("runs", COLUMNS, ROWS, width), width)
    assert max(len(line) for line in lines) <= width
    body = "\n".join(lines)
    for row in ROWS:
        for value in row[1:2] + row[3:6]:  # status, steps, loss, exact_match
            assert value in body
    assert "…" not in "".join(row[1] for row in ROWS)


def test_shortened_ids_in_the_table_resolve_to_their_runs():
    lines = render(fit_table("runs", COLUMNS, ROWS, 80), 80)
    shown = [line.split()[0] for line in lines if line.split() and line.split()[0][:4] in ("demo", "5f0e")]
    assert len(shown) == 3 and any("…" in s for s in shown)
    assert [resolve_id(s, RUN_IDS, "run") for s in shown] == RUN_IDS


def test_a_column_left_out_to_fit_is_named():
    lines = render(fit_table("runs", COLUMNS, ROWS, 80), 80)
    assert "left out to fit 80 columns: updated_at (--json has them)" in " ".join(" ".join(lines).split())


def test_ids_that_would_read_the_same_once_shortened_are_wrapped_whole():
    ids = ["run-aaaaaaaaaaaaxaaaaaaaaaaa-1", "run-aaaaaaaaaaaayaaaaaaaaaaa-1"]
    table = fit_table("runs", [Column("run_id", "id"), Column("status")], [[i, "completed"] for i in ids], 24)
    text = "".join(line.strip() for line in render(table, 24))
    assert "…" not in text and "completed" in text
    assert "".join(line.split()[0] for line in render(table, 24)[3:]) == ids[0] + ids[1]  # each folded whole


def test_shorten_middle_keeps_head_and_tail():
    assert shorten_middle("abcdefghijklmnopqrstuvwxyz", 9) == "abcd…wxyz"
    assert shorten_middle("short", 9) == "short"


def test_resolve_id_accepts_whole_ids_prefixes_and_shortened_forms():
    assert resolve_id("demo-144b0c07-v1-p0o3", RUN_IDS, "run") == RUN_IDS[0]
    assert resolve_id("demo", RUN_IDS, "run") == RUN_IDS[0]
    assert resolve_id("5f0e8a1c2", RUN_IDS, "run") == RUN_IDS[1]
    assert resolve_id("5f0e...ffff", RUN_IDS, "run") == RUN_IDS[2]


def test_resolve_id_refuses_ambiguous_and_unknown_ids():
    with pytest.raises(AmbiguousId, match=f"5f0e8a1c matches 2 runs: {RUN_IDS[1]}, {RUN_IDS[2]}"):
        resolve_id("5f0e8a1c", RUN_IDS, "run")
    with pytest.raises(UnknownId, match="no run 'zzz'"):
        resolve_id("zzz", RUN_IDS, "run")
    with pytest.raises(UnknownId):
        resolve_id("", RUN_IDS, "run")
