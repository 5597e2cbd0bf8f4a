"""Pure parts of the API: cursors, JSON assembly, run status, the leaderboard's order, meta filters."""

from __future__ import annotations

import json

import pytest

from api.cursor import START, Position, decode_cursor, encode_cursor
from api.errors import InvalidRequest
from api.queries.jsonrows import last_row, row_count, rows_array
from api.queries.runs import status_of
from api.readahead import Run, page_json
from api.routers.evaluations import rank
from api.routers.runs import dataset_matches
from api.routers.traces import parse_meta

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("position", [Position(0, 0), Position(3, 2**40), Position(0, -1), Position(2**32 - 1, 5)])
def test_a_cursor_names_the_position_it_was_made_from(position):
    cursor = encode_cursor(position)
    assert decode_cursor(cursor) == position


@pytest.mark.parametrize("cursor", ["", None])
def test_no_cursor_starts_before_every_row(cursor):
    assert decode_cursor(cursor) == START


@pytest.mark.parametrize("cursor", ["garbage", "bm90LWEtY3Vyc29y", encode_cursor(Position(1, 2))[:-2] + "!!",
                                    "azE6LTE6NQ", "azI6MTox"])
def test_a_cursor_this_api_did_not_make_is_refused_naming_the_parameter(cursor):
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor(cursor)
    assert caught.value.details == [{"field": "query.cursor", "message": "unknown cursor"}]
    assert "next_cursor" in caught.value.message


def test_engine_rows_become_a_json_array():
    rows = b'{"partition":0,"offset":7,"trace_id":"a\\nb"}\n{"partition":1,"offset":2,"trace_id":"c"}\n'
    assert json.loads(rows_array(rows)) == [{"partition": 0, "offset": 7, "trace_id": "a\nb"},
                                            {"partition": 1, "offset": 2, "trace_id": "c"}]
    assert row_count(rows) == 2 and last_row(rows)["offset"] == 2 and rows_array(b"") == b"[]"


def _rows(keys: list[tuple[int, int]]) -> bytes:
    return b"".join(json.dumps({"partition": p, "offset": o, "trace_id": f"t{p}-{o}"}, separators=(",", ":")).encode() + b"\n" for p, o in keys)


KEYS = [(0, 3), (0, 9), (1, 0), (1, 1), (2, 5)]


def test_a_run_serves_every_page_inside_it_and_no_page_it_cannot_vouch_for():
    run = Run.parse(START, _rows(KEYS), asked=5)  # as many rows as asked: more may follow
    lines, nxt = run.page(START, 2)
    assert [json.loads(x)["trace_id"] for x in lines] == ["t0-3", "t0-9"] and nxt == Position(0, 9)
    assert [json.loads(x)["offset"] for x in run.page(Position(0, 9), 3)[0]] == [0, 1, 5]
    assert run.page(Position(1, 0), 3) is None  # only 2 rows left in the run, and it was not the end
    assert run.page(Position(0, 4), 1) is None  # not a key of the run: another run must answer
    end = Run.parse(Position(1, 1), _rows(KEYS[4:]), asked=10)  # fewer rows than asked: the end
    assert end.page(Position(1, 1), 100) == ([_rows(KEYS[4:]).rstrip()], None)
    assert end.page(Position(2, 5), 100) == ([], None)


def test_a_page_names_its_next_cursor_only_when_full():
    full = json.loads(page_json([b'{"partition":1,"offset":2}'], Position(1, 2), 1, encode_cursor))
    assert decode_cursor(full["next_cursor"]) == Position(1, 2) and full["limit"] == 1
    assert json.loads(page_json([], None, 10, encode_cursor)) == {"items": [], "next_cursor": None, "limit": 10}


def test_meta_filters_are_key_value_pairs_and_anything_else_is_named():
    assert parse_meta(["lang=en", "note=a=b", "empty="]) == (("lang", "en"), ("note", "a=b"), ("empty", ""))
    with pytest.raises(InvalidRequest) as caught:
        parse_meta(["lang=en", "difficulty"])
    assert caught.value.details[0]["field"] == "query.meta.1"


@pytest.mark.parametrize(("terminal", "active", "status"), [
    ("", 0, "queued"), ("", 3, "running"), ("completed", 5, "completed"), ("cancelled", 0, "cancelled"),
])
def test_run_status_comes_from_its_events(terminal, active, status):
    assert status_of(terminal, active) == status


def _run(run_id: str, score, loss=None, started="2026-01-01T00:00:00.000Z", dataset=("arith", 1)):
    card = None if score is None else {"exact_match": score, **({"loss": loss} if loss is not None else {})}
    return {"run_id": run_id, "scorecard": card, "started_at": started, "updated_at": started,
            "dataset": {"name": dataset[0], "version": dataset[1], "content_sha256": "x"}}


def test_the_leaderboard_ranks_by_exact_match_then_lower_loss_and_leaves_out_unevaluated_runs():
    runs = [_run("low", 0.1, 1.0), _run("tie-worse-loss", 0.5, 2.0), _run("none", None),
            _run("tie-better-loss", 0.5, 1.5), _run("no-loss", 0.5)]
    assert [(e["rank"], e["run_id"]) for e in rank(runs)] == [
        (1, "tie-better-loss"), (2, "tie-worse-loss"), (3, "no-loss"), (4, "low")]


def test_dataset_filter_takes_a_name_or_name_at_version():
    run = _run("r", 0.1, dataset=("arith", 2))
    assert dataset_matches(run, None) and dataset_matches(run, "arith") and dataset_matches(run, "arith@2")
    assert not dataset_matches(run, "arith@1") and not dataset_matches(run, "other")
