"""Dead-letter replay's bookkeeping: which dead letters are chosen, and what the report says."""

from collections import Counter
from datetime import UTC, datetime

import pytest

from streams.dlq_replay import DeadLetterAt, ReplayReport, _selected

pytestmark = pytest.mark.unit


def letter(reason="unknown_schema", failed_at=datetime(2026, 11, 30, 5, tzinfo=UTC)):
    return DeadLetterAt("traces.dlq", 2, 1234, 0, {"reason": reason, "failed_at": failed_at, "original": b""})


def test_coordinates_name_the_dead_letter():
    assert letter().coordinates == "traces.dlq/2/1234"


def test_selection_by_reason_and_instant():
    since = datetime(2026, 11, 30, 5, tzinfo=UTC)
    assert _selected(letter(), frozenset(), None)
    assert _selected(letter(), frozenset({"unknown_schema", "no_steps"}), since)
    assert not _selected(letter("no_steps"), frozenset({"unknown_schema"}), None)
    assert not _selected(letter(failed_at=datetime(2026, 11, 30, 4, 59, tzinfo=UTC)), frozenset(), since)


def test_report_is_refused_only_when_everything_was_replayed_before():
    assert not ReplayReport().refused  # nothing matched: nothing to refuse
    assert ReplayReport(already_replayed=Counter(unknown_schema=2)).refused
    report = ReplayReport(replayed=Counter(no_steps=1), already_replayed=Counter(unknown_schema=2))
    assert not report.refused
    assert report.as_dict() == {
        "replayed": 1, "already_replayed": 2, "undecodable": 0, "dry_run": False,
        "by_reason": {"no_steps": {"replayed": 1, "already_replayed": 0},
                      "unknown_schema": {"replayed": 0, "already_replayed": 2}},
    }
