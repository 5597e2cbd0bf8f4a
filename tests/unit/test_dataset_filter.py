"""TraceFilter semantics for every condition, and the CLI expressions that build it."""

from datetime import datetime, timedelta, timezone

import pytest

from dataset.filter import TraceFilter, parse_filter
from schemas.errors import InvalidDatasetRequest, TracestreamError

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def record(**overrides):
    r = {
        "topic": "traces.valid",
        "partition": 0,
        "offset": 7,
        "trace_id": "t-1",
        "trace_version": 2,
        "prompt": "What is 2+2?",
        "steps": [
            {"i": 0, "type": "plan", "content": "add"},
            {"i": 1, "type": "calc", "content": "4"},
        ],
        "final_answer": "4",
        "meta": {"lang": "en", "team": "math"},
        "source": "gen",
        "created_at": T0,
        "score": 0.5,
        "model": None,
    }
    r.update(overrides)
    return r


def test_empty_filter_matches_everything():
    f = TraceFilter()
    assert f.is_empty
    assert f.matches(record())
    assert f.matches(record(score=None, steps=[], meta={}))
    assert f.describe() == "all traces"


def test_sources():
    f = TraceFilter(sources=("gen", "human"))
    assert f.matches(record(source="gen"))
    assert f.matches(record(source="human"))
    assert not f.matches(record(source="other"))


def test_trace_versions():
    f = TraceFilter(trace_versions=(1, 3))
    assert f.matches(record(trace_version=3))
    assert not f.matches(record(trace_version=2))


def test_meta_requires_every_pair():
    f = TraceFilter(meta={"lang": "en", "team": "math"})
    assert f.matches(record())
    assert f.matches(record(meta={"lang": "en", "team": "math", "extra": "x"}))
    assert not f.matches(record(meta={"lang": "en"}))
    assert not f.matches(record(meta={"lang": "de", "team": "math"}))
    assert TraceFilter(meta={"lang": ""}).matches(record(meta={"lang": ""}))
    assert not TraceFilter(meta={"lang": ""}).matches(record(meta={}))


def test_created_window_is_inclusive_then_exclusive():
    f = TraceFilter(created_from=T0, created_until=T0 + timedelta(seconds=1))
    assert f.matches(record(created_at=T0))
    assert not f.matches(record(created_at=T0 - timedelta(milliseconds=1)))
    assert f.matches(record(created_at=T0 + timedelta(milliseconds=999)))
    assert not f.matches(record(created_at=T0 + timedelta(seconds=1)))


def test_created_window_compares_instants_not_wall_clocks():
    plus2 = timezone(timedelta(hours=2))
    f = TraceFilter(created_from=datetime(2024, 5, 1, 14, 0, tzinfo=plus2))
    assert f.created_from == T0 and f.created_from.tzinfo is timezone.utc
    assert f.matches(record(created_at=T0))


def test_step_bounds_are_inclusive():
    two = record()
    assert TraceFilter(min_steps=2, max_steps=2).matches(two)
    assert not TraceFilter(min_steps=3).matches(two)
    assert not TraceFilter(max_steps=1).matches(two)


def test_score_bounds_are_inclusive():
    assert TraceFilter(min_score=0.5, max_score=0.5).matches(record(score=0.5))
    assert not TraceFilter(min_score=0.51).matches(record(score=0.5))
    assert not TraceFilter(max_score=0.49).matches(record(score=0.5))


def test_a_record_without_score_never_passes_a_score_bound():
    assert not TraceFilter(min_score=0.0).matches(record(score=None))
    assert not TraceFilter(max_score=1.0).matches(record(score=None))
    assert not TraceFilter(min_score=float("-inf")).matches(record(score=None))
    assert TraceFilter(min_steps=1).matches(record(score=None))


def test_all_conditions_must_hold():
    f = TraceFilter(sources=("gen",), min_score=0.4, meta={"lang": "en"})
    assert f.matches(record())
    assert not f.matches(record(source="x"))
    assert not f.matches(record(score=0.1))


def test_normalization_makes_equal_filters_equal():
    a = TraceFilter(sources=["b", "a", "a"], trace_versions=[2, 1], meta={"y": "1", "x": "2"})
    b = TraceFilter(sources=("a", "b"), trace_versions=(1, 2), meta=(("x", "2"), ("y", "1")))
    assert a == b and hash(a) == hash(b)
    assert a.sources == ("a", "b") and a.meta == (("x", "2"), ("y", "1"))


def test_instants_are_truncated_to_millis():
    f = TraceFilter(created_from=T0.replace(microsecond=123456))
    assert f.created_from.microsecond == 123000


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"created_from": datetime(2024, 1, 1)}, "naive"),
        ({"created_from": T0, "created_until": T0}, "before created_until"),
        ({"min_steps": 3, "max_steps": 2}, "at most max_steps"),
        ({"min_score": 0.9, "max_score": 0.1}, "at most max_score"),
        ({"min_score": float("nan")}, "number"),
        ({"min_steps": -1}, "between"),
        ({"trace_versions": (2**31,)}, "between"),
        ({"sources": "gen"}, "not one string"),
        ({"sources": ("",)}, "non-empty"),
        ({"meta": (("lang", "en"), ("lang", "de"))}, "both"),
    ],
)
def test_impossible_or_malformed_filters_are_refused(kwargs, fragment):
    with pytest.raises(InvalidDatasetRequest, match=fragment) as info:
        TraceFilter(**kwargs)
    assert isinstance(info.value, TracestreamError) and not info.value.retriable


def test_avro_dict_round_trip():
    f = TraceFilter(
        sources=("a",), trace_versions=(1,), meta={"k": "v"}, created_from=T0,
        created_until=T0 + timedelta(days=1), min_steps=1, max_steps=9,
        min_score=0.1, max_score=0.9,
    )
    assert TraceFilter.from_avro(f.to_avro()) == f
    assert TraceFilter.from_avro({}) == TraceFilter()


# --- parse_filter -------------------------------------------------------------


def test_parse_every_accepted_form():
    f = parse_filter(
        [
            "source=gen,human",
            "trace_version=1,2",
            "meta.lang=en",
            "meta.note=a=b, c ",
            "created_from=2024-05-01T12:00:00Z",
            "created_until=2024-05-02",
            "steps>=2",
            "steps<=10",
            "score>=0.25",
            "score<=1",
        ]
    )
    assert f == TraceFilter(
        sources=("gen", "human"),
        trace_versions=(1, 2),
        meta={"lang": "en", "note": "a=b, c "},
        created_from=T0,
        created_until=datetime(2024, 5, 2, tzinfo=timezone.utc),
        min_steps=2,
        max_steps=10,
        min_score=0.25,
        max_score=1.0,
    )


def test_parse_tolerates_spaces_and_repeated_lists():
    f = parse_filter(
        ["steps >= 2", " source = a ", "source=b", "trace_version=1", "trace_version=1"]
    )
    assert f == TraceFilter(sources=("a", "b"), trace_versions=(1,), min_steps=2)


def test_parse_nothing_is_the_empty_filter():
    assert parse_filter([]) == TraceFilter()


def test_parse_offset_aware_instant():
    f = parse_filter(["created_from=2024-05-01T14:00:00+02:00"])
    assert f.created_from == T0


def test_expressions_round_trip_through_parse_filter():
    f = TraceFilter(
        sources=("a", "b"), trace_versions=(3,), meta={"k": "v w"}, created_from=T0,
        created_until=T0 + timedelta(milliseconds=1), min_steps=0, max_steps=5,
        min_score=0.1, max_score=0.30000000000000004,
    )
    assert parse_filter(f.expressions()) == f
    assert "steps>=0" in f.describe()


@pytest.mark.parametrize(
    "expression",
    [
        "sources=a",
        "source",
        "source=",
        "source=a,,b",
        "trace_version=one",
        "trace_version=1.5",
        "meta.=x",
        "meta.lang",
        "created_from=yesterday",
        "steps>2",
        "steps>=two",
        "steps=3",
        "score>=nan",
        "score>=inf",
        "score==1",
        "model=x",
        "",
    ],
)
def test_parse_refuses_unknown_or_malformed(expression):
    with pytest.raises(InvalidDatasetRequest) as info:
        parse_filter([expression])
    message = str(info.value)
    assert repr(expression) in message
    for form in ("source=A,B", "meta.KEY=VALUE", "steps>=N", "score<=X", "created_until=ISO-8601"):
        assert form in message


@pytest.mark.parametrize(
    "expressions, fragment",
    [
        (["steps>=2", "steps>=3"], "repeats"),
        (["meta.a=1", "meta.a=2"], "contradicts"),
        (["steps>=5", "steps<=2"], "at most max_steps"),
        (["created_from=2024-05-02", "created_until=2024-05-01"], "before created_until"),
        (["steps>=-1"], "between"),
    ],
)
def test_parse_refuses_contradictions(expressions, fragment):
    with pytest.raises(InvalidDatasetRequest, match=fragment):
        parse_filter(expressions)
