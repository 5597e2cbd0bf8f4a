"""The Trace field table against the packaged Avro schemas, and what follows from it."""

from datetime import UTC, datetime

from schemas.registry import default_registry
from schemas.trace_fields import TRACE_FIELD_COLUMNS, TRACE_FIELDS, TRACE_RECORD_KEYS
from warehouse.tables import TRACE_COLUMNS, add_missing_columns_sql


def test_the_table_has_every_field_of_the_latest_trace_schema_in_its_order_and_version():
    versions = default_registry().versions("Trace")
    latest = [field["name"] for field in versions[-1].definition["fields"]]
    assert list(TRACE_RECORD_KEYS) == latest
    for field in TRACE_FIELDS:
        first = next(v.version for v in versions if field.name in {f["name"] for f in v.definition["fields"]})
        assert field.since == first, f"{field.name} came with Trace v{first}"


def test_fields_added_after_v1_become_columns_old_rows_can_hold():
    later = [column for field in TRACE_FIELDS if field.since > 1 for column in field.columns]
    assert later and all(column.type.startswith("Nullable(") for column in later)
    v1_present = {name for name, _ in TRACE_COLUMNS} - {column.name for column in later}
    assert add_missing_columns_sql("db", "traces", v1_present) == [
        f"ALTER TABLE `db`.`traces` ADD COLUMN IF NOT EXISTS `{column.name}` {column.type}" for column in later]


def test_the_traces_table_is_the_fields_columns_then_the_writer_version_and_the_kafka_coordinates():
    assert TRACE_COLUMNS == (*((c.name, c.type) for c in TRACE_FIELD_COLUMNS), ("schema_version", "UInt16"),
                             ("topic", "LowCardinality(String)"), ("partition", "UInt32"), ("offset", "UInt64"),
                             ("ingested_at", "DateTime64(3, 'UTC')"))


def test_column_values_of_one_record():
    record = {"trace_id": "t", "trace_version": 3, "prompt": "p", "final_answer": "a", "meta": {"k": "v"},
              "source": "s", "created_at": datetime(2026, 1, 1, tzinfo=UTC), "score": None,
              "steps": [{"i": 0, "type": "thought", "content": "x"}, {"i": 1, "type": "tool", "content": "y"}]}
    values = {column.name: column.value(record) for column in TRACE_FIELD_COLUMNS}
    assert values == {"trace_id": "t", "trace_version": 3, "prompt": "p", "step_index": [0, 1],
                      "step_type": ["thought", "tool"], "step_content": ["x", "y"], "final_answer": "a",
                      "meta": {"k": "v"}, "source": "s", "created_at": datetime(2026, 1, 1, tzinfo=UTC),
                      "score": None, "model": None}


def test_a_dataset_record_is_its_kafka_coordinates_then_the_trace_fields():
    from dataset.hashing import RECORD_KEYS

    assert RECORD_KEYS == ("topic", "partition", "offset", *TRACE_RECORD_KEYS)
