"""The topic contracts document is generated from the schemas and must match what is committed."""

from __future__ import annotations

import pytest

from deploy.settings import Topics
from schemas.contracts import CONTRACTS, DOC_PATH, REGENERATE, main, render, type_text
from schemas.registry import SchemaRegistry, default_registry
from tests.registries import registry_with_trace_v3

pytestmark = pytest.mark.unit


def test_docs_topics_md_is_up_to_date_with_the_schemas():
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    assert committed == render(), (
        f"{DOC_PATH.relative_to(DOC_PATH.parents[1])} is out of date with schemas/avro/ or schemas/contracts.py; "
        f"regenerate it with `{REGENERATE}` and commit it"
    )


def test_check_mode_names_the_command_when_the_file_is_stale(tmp_path, capsys):
    stale = tmp_path / "topics.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert main(["--check", "--out", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--out", str(stale)]) == 0
    assert main(["--check", "--out", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == render()


def test_every_topic_tracestream_owns_has_a_contract_and_every_contract_a_registered_schema():
    assert sorted(c.topic for c in CONTRACTS) == sorted(Topics().model_dump().values())
    registry = default_registry()
    for contract in CONTRACTS:
        assert registry.versions(contract.value), f"{contract.topic} carries unregistered {contract.value}"


def test_every_registered_version_and_field_is_in_the_document():
    registry, text = default_registry(), render()
    for name in registry.names():
        assert f"\n### {name}\n" in text
        for schema in registry.versions(name):
            assert f"| v{schema.version} | `{schema.fingerprint.hex()}` |" in text
            for field in schema.definition["fields"]:
                assert f"| `{field['name']}` |" in text


def with_trace_v3() -> SchemaRegistry:
    """The packaged schemas plus a Trace v3 that adds a field, as a producer team would add one."""
    return registry_with_trace_v3({"name": "language", "type": ["null", "string"], "default": None,
                                   "doc": "Natural language of the prompt (BCP 47)."})


def test_a_new_schema_version_shows_up_without_touching_the_generator():
    text = render(with_trace_v3())
    assert "[`Trace`](#trace) (v1, v2, v3)" in text
    assert "(latest: v3)" in text  # traces.valid carries the latest
    assert "| `Trace.language` | none |" in text  # the v3 row: fields added, none removed
    assert "| `language` | `null \\| string` | null | v3 | Natural language of the prompt (BCP 47). |" in text
    assert text != render()  # so the up-to-date test fails until the file is regenerated


def test_types_read_as_one_line():
    assert type_text("string") == "string"
    assert type_text(["null", "double"]) == "null | double"
    assert type_text({"type": "long", "logicalType": "timestamp-millis"}) == "timestamp-millis (long)"
    assert type_text({"type": "array", "items": {"type": "record", "name": "Step", "fields": []}}) == "array<Step>"
    assert type_text({"type": "map", "values": "string"}) == "map<string, string>"
    assert type_text({"type": "int"}) == "int"
