"""The tables' definitions: what a migration adds, and what keeps a table from taking this version's rows."""

from warehouse.tables import TABLES, add_missing_columns_sql, schema_differences


def test_a_table_of_an_older_version_gains_exactly_the_columns_added_since():
    present = {name for name, _ in TABLES["traces"]} - {"model"}
    assert add_missing_columns_sql("db", "traces", present) == [
        "ALTER TABLE `db`.`traces` ADD COLUMN IF NOT EXISTS `model` Nullable(String)"]
    assert add_missing_columns_sql("db", "traces", present | {"model", "extra"}) == []


def test_schema_differences_name_the_table_the_column_and_both_types():
    expected = dict(TABLES["traces"])
    assert schema_differences("db", "traces", expected) == []
    assert schema_differences("db", "traces", {**expected, "extra": "String"}) == []  # a column we do not write
    assert schema_differences("db", "traces", {**expected, "meta": "Map(String,String)"}) == []  # spacing only
    assert schema_differences("db", "traces", None) == ["table `db`.`traces` does not exist"]
    changed = {**{k: v for k, v in expected.items() if k != "model"}, "meta": "String"}
    assert schema_differences("db", "traces", changed) == [
        "`db`.`traces`.`meta` is String, this version writes Map(String, String)",
        "`db`.`traces` has no column `model` (Nullable(String))",
    ]
