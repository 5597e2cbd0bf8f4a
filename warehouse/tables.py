"""Table definitions. Every table of events is keyed by its Kafka coordinates.

ReplacingMergeTree ordered by (topic, partition, offset) makes a re-delivered
event collapse into the row it already wrote, so at-least-once delivery from
Kafka gives effectively-once rows; readers count with FINAL.
"""

from schemas.trace_fields import TRACE_FIELD_COLUMNS

TRACE_COLUMNS: tuple[tuple[str, str], ...] = (
    *((column.name, column.type) for column in TRACE_FIELD_COLUMNS),  # the record's fields (schemas.trace_fields)
    ("schema_version", "UInt16"),  # the Trace schema version the producer wrote
    ("topic", "LowCardinality(String)"),
    ("partition", "UInt32"),
    ("offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)

DEAD_LETTER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("trace_id", "Nullable(String)"),
    ("reason", "LowCardinality(String)"),
    ("message", "String"),
    ("stage", "LowCardinality(String)"),
    ("source_topic", "LowCardinality(String)"),
    ("source_partition", "UInt32"),
    ("source_offset", "UInt64"),
    ("original", "String"),
    ("failed_at", "DateTime64(3, 'UTC')"),
    ("topic", "LowCardinality(String)"),
    ("partition", "UInt32"),
    ("offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)

DATASET_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "String"),
    ("version", "Int32"),
    ("event_type", "LowCardinality(String)"),
    ("record_count", "UInt64"),
    ("train_count", "UInt64"),
    ("eval_count", "UInt64"),
    ("content_sha256", "String"),
    ("manifest", "String"),
    ("error", "Nullable(String)"),
    ("at", "DateTime64(3, 'UTC')"),
    ("topic", "LowCardinality(String)"),
    ("partition", "UInt32"),
    ("offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)

RUN_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "String"),
    ("event_type", "LowCardinality(String)"),
    ("at", "DateTime64(3, 'UTC')"),
    ("dataset_name", "String"),
    ("dataset_version", "Int32"),
    ("dataset_sha256", "String"),
    ("config", "String"),
    ("seed", "Int32"),
    ("workers", "Int32"),
    ("checkpoint_step", "Nullable(Int64)"),
    ("checkpoint_path", "Nullable(String)"),
    ("checkpoint_sha256", "Nullable(String)"),
    ("scorecard", "Nullable(String)"),
    ("error", "Nullable(String)"),
    ("topic", "LowCardinality(String)"),
    ("partition", "UInt32"),
    ("offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
    ("tune_id", "Nullable(String)"),  # RunEvent v4; added last, so older tables gain it (ensure_tables)
)

RUN_METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "String"),
    ("step", "Int64"),
    ("loss", "Float64"),
    ("learning_rate", "Float64"),
    ("grad_norm", "Float64"),
    ("tokens_per_s", "Float64"),
    ("at", "DateTime64(3, 'UTC')"),
    ("topic", "LowCardinality(String)"),
    ("partition", "UInt32"),
    ("offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)

MODEL_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "String"),
    ("version", "Int32"),
    ("event_type", "LowCardinality(String)"),
    ("at", "DateTime64(3, 'UTC')"),
    ("run_id", "String"),
    ("stage", "Nullable(String)"),
    ("event", "String"),  # the whole ModelEvent as canonical JSON: readers fold it as the CLI folds the log
    ("topic", "LowCardinality(String)"),
    ("partition", "UInt32"),
    ("offset", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "traces": TRACE_COLUMNS,
    "dlq": DEAD_LETTER_COLUMNS,
    "datasets": DATASET_EVENT_COLUMNS,
    "runs": RUN_EVENT_COLUMNS,
    "run_metrics": RUN_METRIC_COLUMNS,
    "models": MODEL_EVENT_COLUMNS,
}


def create_table_sql(database: str, table: str) -> str:
    columns = ",\n    ".join(f"`{name}` {type_}" for name, type_ in TABLES[table])
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (\n    {columns}\n)\n"
        "ENGINE = ReplacingMergeTree\nORDER BY (`topic`, `partition`, `offset`)"
    )


def add_missing_columns_sql(database: str, table: str, present: set[str]) -> list[str]:
    """ALTERs that give a table created by an older version the columns added since (nullable, so old rows read null)."""
    return [f"ALTER TABLE `{database}`.`{table}` ADD COLUMN IF NOT EXISTS `{name}` {type_}"
            for name, type_ in TABLES[table] if name not in present]


def schema_differences(database: str, table: str, present: dict[str, str] | None) -> list[str]:
    """What keeps this version from writing ``table`` as it is (``present``: column → type; None: no such table).

    A column this version does not write is no problem; one it writes must
    exist with the type it expects.
    """
    if present is None:
        return [f"table `{database}`.`{table}` does not exist"]
    differences = []
    for name, type_ in TABLES[table]:
        if name not in present:
            differences.append(f"`{database}`.`{table}` has no column `{name}` ({type_})")
        elif present[name].replace(" ", "") != type_.replace(" ", ""):
            differences.append(f"`{database}`.`{table}`.`{name}` is {present[name]}, this version writes {type_}")
    return differences


def column_names(table: str) -> list[str]:
    return [name for name, _ in TABLES[table]]
