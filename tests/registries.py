"""Schema registries for tests: the packaged schemas plus a Trace version the platform does not ship."""

from __future__ import annotations

import copy

from schemas.registry import SchemaRegistry, default_registry


def registry_with_trace_v3(field: dict) -> SchemaRegistry:
    """The packaged schemas plus a Trace v3 that appends ``field`` to v2, compatibility-checked on register."""
    packaged = default_registry()
    registry = SchemaRegistry()
    for name in packaged.names():
        for schema in packaged.versions(name):
            registry.register(name, schema.definition)
    v3 = copy.deepcopy(packaged.latest("Trace").definition)
    v3["fields"].append(field)
    assert registry.register("Trace", v3).version == 3
    return registry
