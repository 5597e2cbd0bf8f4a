"""The train/eval split: a pure function of salt and trace id, never of order or chance."""

import hashlib
import random

import pytest

from dataset.filter import TraceFilter
from dataset.select import select
from dataset.split import Split, parse_split
from schemas.errors import InvalidDatasetRequest

pytestmark = pytest.mark.unit

IDS = [f"trace-{i:05d}" for i in range(10_000)]


def test_assignment_follows_the_documented_rule():
    split = Split(0.3, salt="s1")
    for trace_id in IDS[:500]:
        n = int.from_bytes(hashlib.sha256(("s1" + trace_id).encode()).digest()[:8], "big")
        assert split.assign(trace_id) == ("eval" if n / 2**64 < 0.3 else "train")


def test_share_is_approximately_honoured_over_10k_ids():
    for share in (0.1, 0.25, 0.5):
        evals = sum(Split(share).assign(t) == "eval" for t in IDS)
        assert abs(evals / len(IDS) - share) < 0.02, (share, evals)


def test_zero_share_is_all_train():
    assert {Split().assign(t) for t in IDS[:1000]} == {"train"}


def test_stable_across_calls_and_instances():
    first = [Split(0.2, "x").assign(t) for t in IDS[:2000]]
    assert first == [Split(0.2, "x").assign(t) for t in IDS[:2000]]
    split = Split(0.2, "x")
    assert first == [split.assign(t) for t in IDS[:2000]]


def test_salt_draws_a_different_split():
    a = [Split(0.5, "a").assign(t) for t in IDS[:1000]]
    b = [Split(0.5, "b").assign(t) for t in IDS[:1000]]
    assert a != b


def test_a_larger_share_only_moves_traces_into_eval():
    small, large = Split(0.1, "s"), Split(0.2, "s")
    for t in IDS[:3000]:
        if small.assign(t) == "eval":
            assert large.assign(t) == "eval"


def test_independent_of_record_order():
    records = [{"trace_id": t, "source": "s"} for t in IDS[:3000]]
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    split = Split(0.15, "o")
    by_id = {r["trace_id"]: name for name, r in select(records, TraceFilter(), split, "all")}
    by_id_shuffled = {
        r["trace_id"]: name for name, r in select(shuffled, TraceFilter(), split, "all")
    }
    assert by_id == by_id_shuffled


def test_select_keeps_input_order_and_partitions_train_and_eval():
    records = [{"trace_id": t, "source": "a" if i % 3 else "b"} for i, t in enumerate(IDS[:1000])]
    split, f = Split(0.3), TraceFilter(sources=("a",))
    everything = list(select(records, f, split, "all"))
    assert [r for _, r in everything] == [r for r in records if r["source"] == "a"]
    train = [r for _, r in select(records, f, split, "train")]
    evals = [r for _, r in select(records, f, split, "eval")]
    assert len(train) + len(evals) == len(everything)
    assert {n for n, _ in select(records, f, split, "eval")} == {"eval"}
    assert all(split.assign(r["trace_id"]) == "train" for r in train)


def test_select_refuses_an_unknown_split_name():
    with pytest.raises(InvalidDatasetRequest, match="test"):
        list(select([], TraceFilter(), Split(), "test"))


def test_parse_split():
    assert parse_split("eval=0.1") == Split(0.1)
    assert parse_split("eval=0.25,salt=v2") == Split(0.25, "v2")
    assert parse_split("eval=0") == Split(0.0)
    assert parse_split("eval=0.1,salt=a=b") == Split(0.1, "a=b")


@pytest.mark.parametrize(
    "text", ["", "0.1", "eval=", "eval=x", "eval=1", "eval=1.5", "eval=-0.1", "eval=nan",
             "train=0.9", "eval=0.1,eval=0.2", "salt=x"],
)
def test_parse_split_refuses(text):
    with pytest.raises(InvalidDatasetRequest, match="eval="):
        parse_split(text)


@pytest.mark.parametrize("share", [1, 1.0, -0.01, float("nan"), True, "0.1"])
def test_share_must_be_in_zero_one(share):
    with pytest.raises(InvalidDatasetRequest, match="0 <= share < 1"):
        Split(share)


def test_split_round_trips_and_normalizes():
    assert Split(0).eval_share == 0.0 and isinstance(Split(0).eval_share, float)
    s = Split(0.1, "z")
    assert Split.from_avro(s.to_avro()) == s
    assert s.describe() == "eval=0.1,salt=z"
    assert parse_split(s.describe()) == s
