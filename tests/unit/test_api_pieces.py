"""Pure parts of the API: cursors, JSON assembly, run status, the leaderboard's order, meta filters."""

from __future__ import annotations

import base64
import json

import pytest

from api.cursor import MAX_PARTITIONS, Cursor, Order, decode_cursor, encode_cursor
from api.errors import InvalidRequest
from api.queries.jsonrows import last_row, row_count, rows_array
from api.queries.keyset import Run
from api.readahead import page_json
from api.routers.evaluations import rank
from api.routers.runs import dataset_matches
from api.routers.traces import parse_meta
from trainer.runlog import ACTIVE, FINISHED, STATUSES, run_status, status_of_events

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cursor", [
    Cursor(Order.ASC, (0,)), Cursor(Order.ASC, (-1, 2**40, 7)), Cursor(Order.ASC, (2**63 - 1,)), Cursor(Order.ASC, ()),
    Cursor(Order.DESC, (5, 0, 3)), Cursor(Order.DESC, (2**63,)), Cursor(Order.DESC, ()),
    Cursor(Order.ASC, tuple(range(MAX_PARTITIONS))),
])
def test_a_cursor_names_the_positions_it_was_made_from(cursor):
    assert decode_cursor(encode_cursor(cursor), cursor.order) == cursor


def test_positions_past_the_vector_hold_the_default_and_trailing_defaults_are_dropped():
    assert Cursor.of(Order.ASC, {2: 9}) == Cursor(Order.ASC, (-1, -1, 9)) == Cursor.of(Order.ASC, (-1, -1, 9, -1))
    assert Cursor.of(Order.ASC, {2: 9}).position(5) == -1 and Cursor.of(Order.DESC, {0: 4}).position(3) == 0
    assert Cursor.start(Order.DESC).position(0) is None  # a desc walk before its first page: unbounded
    with pytest.raises(ValueError):
        encode_cursor(Cursor.start(Order.DESC))


@pytest.mark.parametrize("order", list(Order))
@pytest.mark.parametrize("cursor", ["", None])
def test_no_cursor_starts_a_walk(cursor, order):
    assert decode_cursor(cursor, order) == Cursor.start(order)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "garbage", "bm90LWEtY3Vyc29y", encode_cursor(Cursor(Order.ASC, (1, 2)))[:-2] + "!!",
    _b64("k1:0:5"), _b64("k2:a:1,2:3"), _b64("k2:x:1"), _b64("k2:a:-2"), _b64("k2:d:-1"), _b64(f"k2:a:{2**63}"),
    _b64(f"k2:d:{2**63 + 1}"), _b64("k2:a:1,-1"), _b64("k2:d:4,0"), _b64("k2:a:01"), _b64("k2:a:+1"), _b64("k2:a:1_0"),
    _b64("k2:a: 1"), _b64("k2:a:1,,2"), _b64("k2:a:" + "9" * 5000), _b64("k2:a:" + ",".join(["1"] * (MAX_PARTITIONS + 1))),
    "A" * 100_000, _b64("k2:a:١"),
])
def test_a_cursor_this_api_did_not_make_is_refused_naming_the_parameter(cursor):
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor(cursor, Order.ASC)
    assert caught.value.details == [{"field": "query.cursor", "message": "unknown cursor"}]
    assert "next_cursor" in caught.value.message


@pytest.mark.parametrize("made, used", [(Order.ASC, Order.DESC), (Order.DESC, Order.ASC)])
def test_a_cursor_of_one_order_is_refused_with_the_other(made, used):
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor(encode_cursor(Cursor(made, (3, 4))), used)
    assert caught.value.details[0]["field"] == "query.cursor" and f"order={made}" in caught.value.message


def test_engine_rows_become_a_json_array():
    rows = b'{"partition":0,"offset":7,"trace_id":"a\\nb"}\n{"partition":1,"offset":2,"trace_id":"c"}\n'
    assert json.loads(rows_array(rows)) == [{"partition": 0, "offset": 7, "trace_id": "a\nb"},
                                            {"partition": 1, "offset": 2, "trace_id": "c"}]
    assert row_count(rows) == 2 and last_row(rows)["offset"] == 2 and rows_array(b"") == b"[]"


def _rows(keys: list[tuple[int, int, str]]) -> bytes:
    return b"".join(json.dumps({"partition": p, "offset": o, "ingested_at": at, "trace_id": f"t{p}-{o}"},
                               separators=(",", ":")).encode() + b"\n" for p, o, at in keys)


KEYS = [(0, 3, "08:01"), (0, 9, "08:03"), (1, 0, "08:02"), (1, 1, "08:05"), (2, 5, "08:04")]


def _ids(lines: list[bytes]) -> list[str]:
    return [json.loads(x)["trace_id"] for x in lines]


def test_a_run_merges_partitions_by_store_time_and_names_the_cursor_after_each_row():
    start = Cursor.start(Order.ASC)
    run = Run.parse(start, _rows(KEYS), asked=5)  # as many rows as asked: more may follow
    lines, nxt = run.page(start, 2)
    assert _ids(lines) == ["t0-3", "t1-0"] and nxt == Cursor(Order.ASC, (3, 0))
    lines, nxt = run.page(nxt, 2)
    assert _ids(lines) == ["t0-9", "t2-5"] and nxt == Cursor(Order.ASC, (9, 0, 5))
    assert run.page(nxt, 3) is None  # one row left in the run, and it was not the end
    assert run.page(Cursor(Order.ASC, (4,)), 1) is None  # not a cursor of the run: another run must answer
    end = Run.parse(start, _rows(KEYS), asked=10)  # fewer rows than asked: the end
    assert end.page(Cursor(Order.ASC, (9, 0, 5)), 100) == ([_rows(KEYS[3:4]).rstrip()], None)


def test_a_desc_run_pins_every_partition_it_read_on_its_first_page():
    start = Cursor.start(Order.DESC)
    run = Run.parse(start, _rows(KEYS), asked=10)
    lines, nxt = run.page(start, 1)
    assert _ids(lines) == ["t1-1"] and nxt == Cursor(Order.DESC, (10, 1, 6))  # partitions 0 and 2 pinned above their top
    assert _ids(run.page(nxt, 10)[0]) == ["t2-5", "t0-9", "t1-0", "t0-3"]


def test_the_merge_stops_where_a_partition_that_filled_its_rows_ran_out():
    """Partition 0 came back full (2 of 2): its unread rows may be older than partition 1's, so stop after its last."""
    rows = _rows([(0, 3, "08:01"), (0, 9, "08:03"), (1, 0, "08:04")])
    run = Run.parse(Cursor.start(Order.ASC), rows, asked=2)
    assert _ids(run.lines) == ["t0-3", "t0-9"] and not run.complete


def test_a_page_names_its_next_cursor_only_when_full():
    cursor = Cursor(Order.DESC, (0, 2))
    full = json.loads(page_json([b'{"partition":1,"offset":2}'], cursor, 1))
    assert decode_cursor(full["next_cursor"], Order.DESC) == cursor and full["limit"] == 1
    assert json.loads(page_json([], None, 10)) == {"items": [], "next_cursor": None, "limit": 10}


def test_meta_filters_are_key_value_pairs_and_anything_else_is_named():
    assert parse_meta(["lang=en", "note=a=b", "empty="]) == (("lang", "en"), ("note", "a=b"), ("empty", ""))
    with pytest.raises(InvalidRequest) as caught:
        parse_meta(["lang=en", "difficulty"])
    assert caught.value.details[0]["field"] == "query.meta.1"


@pytest.mark.parametrize(("events", "status"), [
    (["queued"], "queued"), (["queued", "started", "metrics"], "running"),
    (["queued", "started", "cancel_requested", "metrics"], "cancelling"),
    (["queued", "started", "cancel_requested", "cancelled"], "cancelled"),
    (["queued", "started", "evaluated", "completed"], "completed"), (["queued", "failed"], "failed"),
    (["queued", "started", "metrics", "stopped"], "stopped"),
])
def test_run_status_comes_from_its_events_by_one_rule(events, status):
    """The CLI's fold of the log and the API's three facts from SQL give the same status."""
    terminal = next((t for t in reversed(events) if t in FINISHED), "")
    from_sql_facts = run_status(terminal, "cancel_requested" in events, any(t in ACTIVE for t in events))
    assert status_of_events(events) == from_sql_facts == status
    assert status in STATUSES


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


def test_the_fast_lane_takes_only_plain_pages_and_leaves_the_rest_to_the_route():
    from api.fastlane import _simple_page

    cursor = encode_cursor(Cursor(Order.DESC, (4, 2)))
    assert _simple_page(b"") == (100, Cursor.start(Order.ASC))
    assert _simple_page(f"order=desc&limit=7&cursor={cursor}".encode()) == (7, Cursor(Order.DESC, (4, 2)))
    for refused in (b"limit=" + b"9" * 5000, b"limit=00001", b"limit=501", b"limit=%D9%A1", b"order=newest",
                    f"cursor={cursor}".encode(), b"limit=5&limit=6", b"source=x"):
        assert _simple_page(refused) is None, refused  # the route answers these (422s, or a filtered page)
