"""Pure parts of the API: cursors, JSON assembly, run status, the leaderboard's order, meta filters."""

from __future__ import annotations

import json

import pytest

from api.cursor import START, Position, decode_cursor, encode_cursor
from api.errors import InvalidRequest
from api.queries.jsonrows import last_row, row_count, rows_array
from api.queries.runs import status_of
from api.routers.evaluations import rank
from api.routers.runs import dataset_matches
from api.routers.traces import page_body, parse_meta

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


def test_engine_rows_become_a_json_array_and_a_cursor_only_for_a_full_page():
    rows = b'{"trace_id":"a\\nb","partition":0,"offset":7}\n{"trace_id":"c","partition":1,"offset":2}\n'
    assert json.loads(rows_array(rows)) == [{"trace_id": "a\nb", "partition": 0, "offset": 7},
                                            {"trace_id": "c", "partition": 1, "offset": 2}]
    assert row_count(rows) == 2 and last_row(rows)["offset"] == 2
    full = json.loads(page_body(rows, 2))
    assert decode_cursor(full["next_cursor"]) == Position(1, 2) and full["limit"] == 2
    assert json.loads(page_body(rows, 3))["next_cursor"] is None
    assert json.loads(page_body(b"", 10)) == {"items": [], "next_cursor": None, "limit": 10}


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
