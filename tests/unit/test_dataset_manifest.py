"""Manifests: offset ranges, validation, lineage, and the DatasetEvent Avro round trip."""

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from dataset.events import DatasetEvent
from dataset.filter import TraceFilter
from dataset.hashing import HASH_FORMAT, ContentHasher
from dataset.manifest import DatasetRef, Manifest
from dataset.ranges import OffsetRange, parse_offsets_json, plan_ranges
from dataset.split import Split
from schemas.codec import AvroCodec
from schemas.errors import DatasetIntegrityError, EncodeError, InvalidDatasetRequest
from schemas.registry import default_registry

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
TOPIC = "traces.valid"
SHA = "ab" * 32
FORMATS_ALL = ("trace", "tunix_sft", "training_example")


def manifest(**overrides):
    fields = dict(
        name="math-sft",
        version=2,
        topic=TOPIC,
        ranges=(OffsetRange(TOPIC, 1, 5, 50), OffsetRange(TOPIC, 0, 0, 100)),
        filter=TraceFilter(
            sources=("gen",), trace_versions=(1, 2), meta={"lang": "en"}, created_from=T0,
            created_until=T0 + timedelta(days=1), min_steps=1, max_steps=50,
            min_score=0.25, max_score=None,
        ),
        split=Split(0.1, "v1"),
        parent=DatasetRef("math-sft", 1),
        created_at=T0,
    )
    fields.update(overrides)
    return Manifest(**fields)


@pytest.fixture(scope="module")
def codec():
    return AvroCodec(default_registry())


def test_offset_range_basics():
    r = OffsetRange(TOPIC, 2, 100, 250)
    assert str(r) == "traces.valid[2]@[100, 250)"
    assert r.size == 150
    assert 100 in r and 249 in r and 250 not in r and 99 not in r


def test_manifest_sorts_ranges_and_counts_offsets():
    m = manifest()
    assert [r.partition for r in m.ranges] == [0, 1]
    assert m.total_offsets == 145
    assert m.range_for(1) == OffsetRange(TOPIC, 1, 5, 50)
    assert m.range_for(7) is None
    assert m.ref == DatasetRef("math-sft", 2) and str(m.ref) == "math-sft@v2"


def test_with_counts_and_replace_keep_invariants():
    m = manifest().with_counts(train_count=90, eval_count=10, content_sha256=SHA, formats=["trace"])
    assert (m.record_count, m.train_count, m.eval_count, m.formats) == (100, 90, 10, ("trace",))
    with pytest.raises(InvalidDatasetRequest, match="must equal record_count"):
        dataclasses.replace(m, record_count=7)
    assert dataclasses.replace(m, version=3).version == 3


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"name": "bad name"}, "not allowed"),
        ({"name": ""}, "not allowed"),
        ({"version": 0}, "between 1"),
        ({"ranges": (OffsetRange("other", 0, 0, 1),)}, "one topic"),
        ({"ranges": (OffsetRange(TOPIC, 0, 0, 1), OffsetRange(TOPIC, 0, 1, 2))}, "two ranges"),
        ({"ranges": (OffsetRange(TOPIC, 0, 5, 1),)}, "starts after it ends"),
        ({"ranges": (OffsetRange(TOPIC, 0, -1, 1),)}, "between 0"),
        ({"created_at": datetime(2024, 1, 1)}, "naive"),
        ({"content_sha256": "XYZ"}, "hex"),
        ({"formats": ("parquet",)}, "tunix_sft"),
        ({"formats": ("trace", "trace")}, "distinct"),
        ({"parent": DatasetRef("math-sft", 2)}, "older"),
        ({"record_count": 5}, "must equal"),
    ],
)
def test_manifest_refuses(overrides, fragment):
    with pytest.raises(InvalidDatasetRequest, match=fragment):
        manifest(**overrides)


def test_dataset_ref_validates():
    with pytest.raises(InvalidDatasetRequest, match="not allowed"):
        DatasetRef("a/b", 1)
    with pytest.raises(InvalidDatasetRequest, match="between 0"):
        DatasetRef("a", -1)


def test_version_zero_means_latest_and_is_no_parent():
    latest = DatasetRef("base", 0)
    assert latest.is_latest and str(latest) == "base@latest"
    with pytest.raises(InvalidDatasetRequest, match="must name a version"):
        manifest(parent=latest)


def test_manifest_avro_dict_round_trip():
    m = manifest().with_counts(train_count=3, eval_count=1, content_sha256=SHA, formats=FORMATS_ALL)
    assert Manifest.from_avro(m.to_avro()) == m


@pytest.mark.parametrize(
    "event",
    [
        DatasetEvent("created", manifest(), T0),
        DatasetEvent(
            "ready",
            manifest().with_counts(
                train_count=9, eval_count=1, content_sha256=SHA, formats=FORMATS_ALL
            ),
            T0 + timedelta(seconds=3),
        ),
        DatasetEvent(
            "failed", manifest(parent=None, filter=TraceFilter(), split=Split()), T0, "boom"
        ),
    ],
)
def test_dataset_event_round_trips_through_the_codec(codec, event):
    data = codec.encode(event.to_avro(), "DatasetEvent")
    record, writer = codec.decode_latest(data, "DatasetEvent")
    assert (writer.name, writer.version) == ("DatasetEvent", 2)
    assert DatasetEvent.from_avro(record) == event
    assert record["manifest"]["ranges"] == [
        {"partition": 0, "start": 0, "end": 100},
        {"partition": 1, "start": 5, "end": 50},
    ]
    assert event.key == b"math-sft"


def test_default_registry_has_dataset_event():
    reg = default_registry()
    assert [s.version for s in reg.versions("DatasetEvent")] == [1, 2]
    fields = [f["name"] for f in reg.latest("DatasetEvent").definition["fields"]]
    assert fields == ["event_type", "manifest", "error", "at"]


def test_codec_refuses_naive_event_time(codec):
    record = DatasetEvent("created", manifest(), T0).to_avro()
    record["at"] = datetime(2024, 1, 1)
    with pytest.raises(EncodeError, match="naive"):
        codec.encode(record, "DatasetEvent")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"event_type": "done"}, "not one of"),
        ({"event_type": "failed"}, "error message"),
        ({"event_type": "created", "error": "x"}, "error message"),
        ({"event_type": "ready"}, "content_sha256"),
        ({"event_type": "created", "at": datetime(2024, 1, 1)}, "naive"),
    ],
)
def test_dataset_event_refuses(kwargs, fragment):
    kwargs = {"manifest": manifest(), "at": T0, **kwargs}
    with pytest.raises(InvalidDatasetRequest, match=fragment):
        DatasetEvent(**kwargs)


# --- parse_offsets_json --------------------------------------------------------


def test_parse_offsets_json():
    ranges = parse_offsets_json('{"1": [5, 50], "0": [0, 100], "3": [7, 7]}', TOPIC)
    assert ranges == (
        OffsetRange(TOPIC, 0, 0, 100),
        OffsetRange(TOPIC, 1, 5, 50),
        OffsetRange(TOPIC, 3, 7, 7),
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{0: [0, 1]}", "not valid JSON"),
        ("", "not valid JSON"),
        ("[[0, 1]]", "non-empty JSON object"),
        ("{}", "non-empty JSON object"),
        ('{"a": [0, 1]}', "not a partition number"),
        ('{"-1": [0, 1]}', "not a partition number"),
        ('{"1.0": [0, 1]}', "not a partition number"),
        ('{"0": [0, 1], "0": [2, 3]}', "twice"),
        ('{"0": [0, 1], "00": [2, 3]}', "twice"),
        ('{"0": [10, 5]}', "starts after it ends"),
        ('{"0": [-1, 5]}', "negative"),
        ('{"0": [0, -5]}', "negative"),
        ('{"0": [0]}', r"\[start, end\]"),
        ('{"0": [0, 1.5]}', r"\[start, end\]"),
        ('{"0": [true, 1]}', r"\[start, end\]"),
        ('{"0": {"start": 0, "end": 1}}', r"\[start, end\]"),
    ],
)
def test_parse_offsets_json_errors(text, fragment):
    with pytest.raises(InvalidDatasetRequest, match=fragment):
        parse_offsets_json(text, TOPIC)


# --- plan_ranges ---------------------------------------------------------------


def test_plan_ranges_without_parent_starts_at_log_start():
    assert plan_ranges(TOPIC, {1: 40, 0: 10}, starts={1: 3}) == (
        OffsetRange(TOPIC, 0, 0, 10),
        OffsetRange(TOPIC, 1, 3, 40),
    )


def test_plan_ranges_continues_from_parent():
    parent = manifest()
    ranges = plan_ranges(TOPIC, {0: 130, 1: 50, 2: 9}, parent=parent)
    assert ranges == (
        OffsetRange(TOPIC, 0, 100, 130),
        OffsetRange(TOPIC, 1, 50, 50),
        OffsetRange(TOPIC, 2, 0, 9),
    )


@pytest.mark.parametrize(
    "ends, starts, fragment",
    [
        ({0: 99, 1: 50}, None, "before the parent's end"),
        ({0: 100}, None, "missing"),
        ({0: 200, 1: 60}, {0: 150}, "deleted by retention"),
    ],
)
def test_plan_ranges_refuses_what_cannot_be_rebuilt(ends, starts, fragment):
    with pytest.raises(InvalidDatasetRequest, match=fragment):
        plan_ranges(TOPIC, ends, parent=manifest(), starts=starts)


def test_plan_ranges_refuses_a_parent_on_another_topic():
    with pytest.raises(InvalidDatasetRequest, match="parent's topic"):
        plan_ranges("other", {0: 1}, parent=manifest())


def test_a_manifest_written_before_the_hash_format_reads_as_format_1_and_verifies(codec):
    """Events of DatasetEvent v1 carry no hash_format: they read as format 1, the rule they were hashed by."""
    ready = DatasetEvent("ready", manifest().with_counts(train_count=1, eval_count=0, content_sha256="a" * 64), T0)
    old = ready.to_avro()
    del old["manifest"]["hash_format"]
    record, writer = codec.decode_latest(codec.encode(old, "DatasetEvent", 1), "DatasetEvent")
    assert writer.version == 1
    read_back = DatasetEvent.from_avro(record)
    assert read_back.manifest.hash_format == HASH_FORMAT == 1
    assert read_back == ready
    assert ContentHasher(read_back.manifest.hash_format).hash_format == 1


def test_a_hash_format_this_version_does_not_know_is_refused_naming_it():
    with pytest.raises(DatasetIntegrityError, match=r"hash format 2 is not one this version knows \(\[1\]\)"):
        ContentHasher(2)
    with pytest.raises(InvalidDatasetRequest, match="hash_format"):
        manifest(hash_format=0)
