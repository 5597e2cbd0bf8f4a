"""Schema registry: fingerprints per the Avro spec, versions, and the compatibility gate."""

import copy
import json
from importlib import resources

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.errors import (
    IncompatibleSchemaError,
    SchemaDefinitionError,
    UnknownFingerprintError,
    UnknownSchemaError,
)
from schemas.registry import (
    RegisteredSchema,
    SchemaRegistry,
    default_registry,
    fingerprint,
)

pytestmark = pytest.mark.unit


def spec_rabin(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def trace_definition(version: int) -> dict:
    text = resources.files("schemas").joinpath(f"avro/trace.v{version}.avsc").read_text()
    return json.loads(text)


@pytest.mark.parametrize(
    ("schema", "published"),
    [  # from Avro's share/test/data/schema-tests.txt (signed 64-bit)
        ("null", 7195948357588979594),
        ("int", 8247732601305521295),
        ({"type": "record", "name": "foo", "fields": [{"name": "f1", "type": "boolean"}]},
         7843277075252814651),
        ({"type": "fixed", "name": "foo", "size": 15}, 1756455273707447556),
    ],
)
def test_fingerprint_matches_avro_spec_test_vectors(schema, published):
    assert fingerprint(schema) == published.to_bytes(8, "little", signed=True)


@pytest.mark.parametrize("version", [1, 2])
def test_fingerprint_is_little_endian_rabin_of_canonical_form(version):
    definition = trace_definition(version)
    pcf = to_parsing_canonical_form(definition)
    fp = fingerprint(definition)
    assert len(fp) == 8
    assert fp == spec_rabin(pcf.encode()).to_bytes(8, "little")
    assert fp.hex() == fastavro_fingerprint(pcf, "CRC-64-AVRO")


def test_canonical_form_drops_logical_types_and_docs():
    definition = trace_definition(1)
    pcf = to_parsing_canonical_form(definition)
    assert '{"name":"created_at","type":"long"}' in pcf
    assert "doc" not in pcf and "timestamp" not in pcf


def test_default_registry_has_the_packaged_versions():
    reg = default_registry()
    assert reg is default_registry()
    assert [s.version for s in reg.versions("Trace")] == [1, 2]
    assert [s.version for s in reg.versions("DeadLetter")] == [1]
    v2 = reg.latest("Trace")
    assert v2 == reg.get("Trace", 2)
    assert v2.definition == trace_definition(2)
    assert reg.by_fingerprint(v2.fingerprint) is v2
    assert v2.parsed["__fastavro_parsed"]


def test_every_field_has_a_doc():
    for name in default_registry().names():
        for schema in default_registry().versions(name):
            stack = [schema.definition]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    if node.get("type") == "record":
                        assert node.get("doc"), node["name"]
                        for f in node["fields"]:
                            assert f.get("doc"), f"{schema.name} v{schema.version} {f['name']}"
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)


def test_register_assigns_versions_and_is_idempotent():
    reg = SchemaRegistry()
    v1 = reg.register("Trace", trace_definition(1))
    v2 = reg.register("Trace", trace_definition(2))
    assert (v1.version, v2.version) == (1, 2)
    assert reg.register("Trace", trace_definition(2)) is v2
    assert reg.register("Trace", trace_definition(1)) is v1
    docs_only = copy.deepcopy(trace_definition(2))
    docs_only["doc"] = "reworded"
    assert reg.register("Trace", docs_only) is v2
    assert reg.versions("Trace") == [v1, v2]


def test_registered_schema_is_frozen_and_hashable():
    entry = SchemaRegistry().register("Trace", trace_definition(1))
    assert isinstance(entry, RegisteredSchema)
    assert {entry: 1}[entry] == 1
    with pytest.raises(AttributeError):
        entry.version = 5


def _v3(add_field: dict | None = None, change: tuple[str, object] | None = None) -> dict:
    definition = copy.deepcopy(trace_definition(2))
    if add_field:
        definition["fields"].append(add_field)
    if change:
        field_name, new_type = change
        next(f for f in definition["fields"] if f["name"] == field_name)["type"] = new_type
    return definition


def _registry_at_v2() -> SchemaRegistry:
    reg = SchemaRegistry()
    reg.register("Trace", trace_definition(1))
    reg.register("Trace", trace_definition(2))
    return reg


def test_refuses_new_required_field():
    reg = _registry_at_v2()
    v3 = _v3(add_field={"name": "tenant", "type": "string", "doc": "no default"})
    with pytest.raises(IncompatibleSchemaError) as info:
        reg.register("Trace", v3)
    message = str(info.value)
    assert "Trace v3" in message and "v2" in message
    assert "reader_field_missing_default_value" in message and "tenant" in message
    assert reg.latest("Trace").version == 2


def test_refuses_type_change():
    reg = _registry_at_v2()
    with pytest.raises(IncompatibleSchemaError, match="type_mismatch"):
        reg.register("Trace", _v3(change=("prompt", "int")))


def test_accepts_compatible_v3():
    reg = _registry_at_v2()
    v3 = reg.register(
        "Trace",
        _v3(
            add_field={"name": "tenant", "type": "string", "default": "", "doc": "d"},
            change=("trace_version", "long"),  # int → long is an Avro promotion
        ),
    )
    assert v3.version == 3 and reg.latest("Trace") is v3


def test_invalid_definition_is_refused():
    with pytest.raises(SchemaDefinitionError, match="not valid Avro"):
        SchemaRegistry().register("Bad", {"type": "record", "name": "Bad", "fields": [{"name": "x"}]})


def test_same_schema_under_two_names_is_refused():
    reg = SchemaRegistry()
    reg.register("Trace", trace_definition(1))
    with pytest.raises(SchemaDefinitionError, match="two names"):
        reg.register("Other", trace_definition(1))


def test_unknown_lookups():
    reg = default_registry()
    with pytest.raises(UnknownSchemaError, match="Nope"):
        reg.latest("Nope")
    with pytest.raises(UnknownSchemaError, match="no version 9"):
        reg.get("Trace", 9)
    with pytest.raises(UnknownSchemaError):
        reg.get("Trace", 0)
    with pytest.raises(UnknownFingerprintError, match="00000000000000ff"):
        reg.by_fingerprint(bytes(7) + b"\xff")
    assert reg.versions("Nope") == []
