"""The import direction: a lower layer never imports a higher one, and the SDK stays light.

Every module's imports are read with ``ast`` (module level and inside
functions alike: a lazy import is still a dependency). Imports under
``if TYPE_CHECKING:`` are left out: they name a type for the checker and
load nothing. ``devtools``, ``bench`` and ``tests`` sit outside the layers
and may import anything.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("schemas",),  # contracts: Avro schemas, codec, validation rules, the field table
    ("deploy",),  # settings, the one Kafka client factory, topic administration, the broker launcher
    ("warehouse", "kafkalog"),  # the two stores' seams: ClickHouse, and reading the Kafka log
    ("ingest", "dataset", "consumers"),  # getting traces in, datasets, the downstream SDK
    ("streams",),  # the stream processors and their runner
    ("trainer",),
    ("api",),
    ("deploy.stack", "deploy.running"),  # the local stack and the records of what a home runs
    ("cli",),
)
"""Lowest first. A module belongs to the layer of its longest matching prefix."""

FREE = ("devtools", "bench", "tests")
"""Developer tools, benchmarks and tests: outside the layers, may import anything."""
FREE_USERS = {"devtools": ("cli",)}
"""Which layers may import a free package: the CLI's ``generate`` and ``demo`` run the generator."""

SDK = ("consumers.subscribe", "consumers.records", "consumers.handled")
SDK_MAY_IMPORT = ("schemas", "deploy.settings", "deploy.kafka_clients", "kafkalog", "consumers")
"""The downstream SDK: settings (and the client factory built from them), schemas, the log reader it reads with."""

OURS = {prefix.split(".")[0] for layer in LAYERS for prefix in layer} | set(FREE)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for top in sorted(OURS):
        for path in (ROOT / top).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def imports_of(module: str) -> tuple[tuple[str, int], ...]:
    """``(imported module, line)`` for every import of ours in ``module``, TYPE_CHECKING blocks left out."""
    path = modules()[module]
    return imports_in(path.read_text(encoding="utf-8"), str(path))


def imports_in(source: str, path: str) -> tuple[tuple[str, int], ...]:
    tree = ast.parse(source, path)
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            # ``from pkg import module`` imports the module pkg.module
            found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names
                         if f"{node.module}.{alias.name}" in modules())
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports, as every module here does")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return tuple((name, line) for name, line in found if name.split(".")[0] in OURS)


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    """The index in ``LAYERS`` of ``module``'s longest matching prefix; None for ``FREE`` modules."""
    if any(_matches(module, free) for free in FREE):
        return None
    best: tuple[int, int] | None = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if _matches(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS (or FREE)"
    return best[1]


def _where(module: str, line: int) -> str:
    return f"{modules()[module].relative_to(ROOT)}:{line}"


def test_every_package_of_ours_is_in_a_layer():
    for module in modules():
        layer_of(module)  # raises naming the module


def test_no_layer_imports_a_higher_one():
    wrong = []
    for module in sorted(modules()):
        mine = layer_of(module)
        if mine is None:
            continue
        for imported, line in imports_of(module):
            theirs = layer_of(imported)
            if theirs is None and any(_matches(module, user) for user in FREE_USERS.get(imported.split(".")[0], ())):
                continue
            if theirs is None or theirs > mine:
                wrong.append(f"{_where(module, line)}: {module} ({'/'.join(LAYERS[mine])}) imports {imported} "
                             f"({'/'.join(LAYERS[theirs]) if theirs is not None else 'a developer tool'})")
    assert not wrong, "lower layers import higher ones:\n" + "\n".join(wrong)


def test_the_sdk_imports_settings_and_schemas_only():
    wrong = []
    for module in SDK:
        for imported, line in imports_of(module):
            if not any(_matches(imported, allowed) for allowed in SDK_MAY_IMPORT):
                wrong.append(f"{_where(module, line)}: {module} imports {imported}")
    assert not wrong, "the subscription SDK reaches past settings, schemas and the log reader:\n" + "\n".join(wrong)


def test_the_sdk_never_loads_the_local_stack():
    seen: set[str] = set()
    todo = list(SDK)
    while todo:
        module = todo.pop()
        if module in seen or module not in modules():
            continue
        seen.add(module)
        todo.extend(name for name, _ in imports_of(module))
    stack = sorted(m for m in seen if any(_matches(m, p) for p in ("deploy.stack", "deploy.running", "cli")))
    assert not stack, f"the SDK imports the local stack (directly or through its imports): {stack}"


def test_the_checker_sees_lazy_imports_and_skips_type_checking_ones():
    """The rule itself: an import inside a function counts, one under TYPE_CHECKING does not."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from api.app import create_app\n"
              "def f():\n    from streams.app import build\n    import cli.main\n")
    assert imports_in(source, "example.py") == (("streams.app", 5), ("cli.main", 6))
    assert layer_of("warehouse.client") < layer_of("streams.app")
    assert layer_of("deploy.settings") < layer_of("kafkalog.log") < layer_of("dataset.manifest") < layer_of("streams.app")
    assert layer_of("deploy.stack") > layer_of("api.app") and layer_of("devtools.generator") is None


def _load_time_imports(module: str) -> set[str]:
    """Modules of ours that ``module`` imports while it loads: top-level statements only."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules().keys()


def test_no_import_circle_at_load_time():
    """No module needs itself to load (a circle hidden by import order, as schemas.dataset and exports had)."""
    graph = {module: _load_time_imports(module) for module in modules()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " → ".join([*path[path.index(module):], module]))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
