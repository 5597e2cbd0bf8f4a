"""The topic contracts: what each topic carries and how it is keyed, who writes it and who reads it.

``docs/topics.md`` is generated from this table and the registered Avro
schemas (every version, fields with type, default and doc), so the document
downstream teams read cannot drift from what is on the wire; a unit test
regenerates it and fails when the file differs. Regenerate with::

    .venv/bin/python -m schemas.contracts
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.registry import RegisteredSchema, SchemaRegistry, default_registry
from schemas.validation import Reason

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "topics.md"
REGENERATE = ".venv/bin/python -m schemas.contracts"

# The record names of the registered value schemas; code names a schema by these, never by a literal.
TRACE = "Trace"
DEAD_LETTER = "DeadLetter"
DATASET_EVENT = "DatasetEvent"
RUN_EVENT = "RunEvent"
MODEL_EVENT = "ModelEvent"


@dataclass(frozen=True)
class TopicContract:
    """One topic as downstream teams see it."""

    topic: str
    """Logical name; the settings' ``topic_prefix`` is prepended on the cluster."""
    key: str
    """What the message key holds (UTF-8 text)."""
    value: str
    """Record name of the value schema in the registry."""
    value_note: str
    """Which versions appear, and what is normalized."""
    partitions: str
    headers: tuple[tuple[str, str], ...]
    """(header name, meaning) of the headers every record carries."""
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    latest_only: bool = False
    """Only the latest version is written here (the writer re-encodes)."""


_SOURCE_HEADERS = (
    ("tracestream-source-topic", "topic of the record this one was made from"),
    ("tracestream-source-offset", "that record's offset (from validate: in the same partition number)"),
)

CONTRACTS: tuple[TopicContract, ...] = (
    TopicContract(
        topic="traces.raw",
        key="trace_id, or none when the producer sent none",
        value=TRACE,
        value_note="any registered version, as the producer wrote it; may also hold bytes that are not a valid "
                   "Trace at all (validate dead-letters them)",
        partitions="`TRACESTREAM_PARTITIONS` (default 4)",
        headers=(("tracestream-replayed-from",
                  "only on events republished by `tracestream dlq replay`: the dead letter's `topic/partition/offset`"),),
        writers=("producers: `TraceProducer`, `tracestream publish`, `POST /api/traces`",
                 "`tracestream dlq replay` (dead letters' original bytes, once each unless `--again`)"),
        readers=("validate (group `<app_id>.validate`)",),
    ),
    TopicContract(
        topic="traces.valid",
        key="trace_id",
        value=TRACE,
        value_note="the latest version, valid and normalized (steps sorted by index); raw partition p goes to "
                   "partition p, in raw-offset order, each raw record exactly once (committed in Kafka "
                   "transactions with the consumed offset: read it with isolation.level=read_committed)",
        partitions="same count as traces.raw",
        headers=(*_SOURCE_HEADERS, ("tracestream-writer-version", "the Trace version the producer wrote")),
        writers=("validate",),
        latest_only=True,
        readers=("materialize (group `<app_id>.materialize`, table `traces`)",
                 "datasets: `tracestream dataset create/export` replay exact offset ranges",
                 "subscribers: `consumers.subscribe`, `tracestream tail`"),
    ),
    TopicContract(
        topic="traces.dlq",
        key="trace_id when it could be read, else none",
        value=DEAD_LETTER,
        value_note="the original bytes with a machine-readable reason; validate writes raw partition p to "
                   "partition p. Reasons: " + ", ".join(
                       f"`{r.value}`" for r in Reason if r not in (Reason.NOT_JSON, Reason.INVALID_SHAPE)),
        partitions="same count as traces.raw",
        headers=_SOURCE_HEADERS,
        writers=("validate (invalid events)", "materialize (rows the warehouse rejected)"),
        readers=("materialize (table `dlq`)", "`tracestream dlq replay` (read whole; the source of truth)",
                 "subscribers: `consumers.subscribe`, `tracestream tail`"),
    ),
    TopicContract(
        topic="datasets.events",
        key="dataset name",
        value=DATASET_EVENT,
        value_note="created, then ready or failed, per dataset version; the manifest names exact offset "
                   "ranges of traces.valid",
        partitions="1 (one ordered history, so a name+version is announced once)",
        headers=(),
        writers=("dataset snapshot: `tracestream dataset create`",),
        readers=("the catalog: `tracestream dataset list/show/export`", "materialize (table `datasets`)",
                 "trainer service: `tracestream trainer` (group `<app_id>.trainer`) starts runs on ready events",
                 "subscribers"),
    ),
    TopicContract(
        topic="runs.events",
        key="run_id",
        value=RUN_EVENT,
        value_note="a run's events in order: queued, started, metrics, checkpoint, evaluated, then completed, "
                   "failed or cancelled, or stopped (a tune's scheduler ended the trial early); cancel_requested "
                   "asks the run's driver to stop; a tune's trials share a tune_id (v4)",
        partitions="`TRACESTREAM_PARTITIONS` (default 4)",
        headers=(),
        writers=("trainer: `tracestream train`, `tracestream trainer`, `tracestream tune` (its trials)",
                 "`tracestream runs cancel`, `tracestream tune cancel` (cancel_requested)"),
        readers=("materialize (tables `runs`, `run_metrics`)", "`tracestream runs list/show`",
                 "the read API (`/api/runs/{id}/events`, Server-Sent Events)", "subscribers"),
    ),
    TopicContract(
        topic="models.events",
        key="model name",
        value=MODEL_EVENT,
        value_note="the model registry: registered (a completed run as the next version of a name, with its "
                   "dataset, eval split hash, artifacts with every file's sha256, and scorecard), promoted (to a "
                   "stage), archived, gated (a regression gate's numbers and pass/fail). The key puts a name's "
                   "events in one partition; folded in offset order, a registered event counts only if its version "
                   "is the name's next one (the first of two concurrent registrations wins, the other registrant "
                   "retries with the next version)",
        partitions="`TRACESTREAM_PARTITIONS` (default 4)",
        headers=(),
        writers=("`tracestream models register/promote/archive/gate`",
                 "trainer service: `tracestream trainer` (a policy rule's `register_as` and `gate`)"),
        readers=("materialize (table `models`)", "`tracestream models list/show`",
                 "the read API (`/api/models`, `/api/models/{name}`)", "subscribers"),
    ),
)


# --- rendering ------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def type_text(t: Any) -> str:
    """An Avro type as one short line: ``array<Step>``, ``null | double``, ``timestamp-millis (long)``."""
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return " | ".join(type_text(x) for x in t)
    if "logicalType" in t:
        return f"{t['logicalType']} ({t['type']})"
    kind = t["type"]
    if kind == "array":
        return f"array<{type_text(t['items'])}>"
    if kind == "map":
        return f"map<string, {type_text(t['values'])}>"
    if kind in ("record", "enum", "fixed"):
        return t["name"]
    return type_text(kind)


def _named(t: Any) -> list[dict]:
    """Named record definitions inside type ``t``, outermost first."""
    if isinstance(t, list):
        return [r for x in t for r in _named(x)]
    if not isinstance(t, dict):
        return []
    if t.get("type") == "record":
        return [t, *(r for f in t["fields"] for r in _named(f["type"]))]
    if t.get("type") == "array":
        return _named(t["items"])
    if t.get("type") == "map":
        return _named(t["values"])
    return []


def _field_paths(definition: dict) -> set[str]:
    return {f"{record['name']}.{f['name']}" for record in _named(definition) for f in record["fields"]}


def _default(field: dict) -> str:
    if "default" not in field:
        return "required"
    value = field["default"]
    return "null" if value is None else f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _since(path: str, versions: list[RegisteredSchema]) -> int:
    return next(v.version for v in versions if path in _field_paths(v.definition))


def _record_tables(latest: RegisteredSchema, versions: list[RegisteredSchema]) -> list[str]:
    lines: list[str] = []
    for record in _named(latest.definition):
        if record is not latest.definition:
            lines += ["", f"`{record['name']}`: {_cell(record.get('doc', ''))}"]
        lines += ["", "| field | type | default | since | doc |", "|---|---|---|---|---|"]
        for f in record["fields"]:
            since = _since(f"{record['name']}.{f['name']}", versions)
            lines.append(f"| `{f['name']}` | `{_cell(type_text(f['type']))}` | {_default(f)} | v{since} | "
                         f"{_cell(f.get('doc', ''))} |")
    return lines


def _schema_section(name: str, versions: list[RegisteredSchema], topics: list[str]) -> list[str]:
    latest = versions[-1]
    on = ", ".join(f"`{t}`" for t in topics) or "no topic yet"
    lines = ["", f"### {name}", "", f"{_cell(latest.definition.get('doc', ''))} On: {on}.", "",
             "| version | fingerprint (CRC-64-AVRO, after `C3 01`) | fields added | fields removed |",
             "|---|---|---|---|"]
    previous: set[str] = set()
    for v in versions:
        paths = _field_paths(v.definition)
        added = ", ".join(f"`{p}`" for p in sorted(paths - previous)) if v.version > 1 else "(first version)"
        removed = ", ".join(f"`{p}`" for p in sorted(previous - paths)) or "none"
        lines.append(f"| v{v.version} | `{v.fingerprint.hex()}` | {added} | {removed} |")
        previous = paths
    return lines + _record_tables(latest, versions)


def _value_text(contract: TopicContract, registry: SchemaRegistry) -> str:
    versions = registry.versions(contract.value)
    link = f"[`{contract.value}`](#{contract.value.lower()})"
    if not versions:
        return f"{link} (not registered)"
    if contract.latest_only:
        return f"{link} (latest: v{versions[-1].version})"
    return f"{link} ({', '.join(f'v{v.version}' for v in versions)})"


def render(registry: SchemaRegistry | None = None, contracts: tuple[TopicContract, ...] = CONTRACTS) -> str:
    """The whole contracts document, deterministic for a given registry.

    Every registered schema gets a section with all its versions, whether a
    topic carries it yet or not, so a new version shows up without editing this module.
    """
    registry = registry or default_registry()
    lines = [
        "# Topic contracts",
        "",
        f"<!-- Generated from schemas/avro/ and schemas/contracts.py by `{REGENERATE}`; do not edit. -->",
        "",
        "What each tracestream topic carries, for teams that read or write them. Every value is Avro in the",
        "spec's single-object encoding: `C3 01`, the 8-byte CRC-64-AVRO fingerprint of the writer schema",
        "(little-endian), then the body. The fingerprint names the writer's schema version, so a reader decodes",
        "any registered version (`consumers.subscribe` resolves it to the latest). A new version is registered",
        "only if it is backward compatible with the previous one. Keys are UTF-8 text. Topic names get the",
        "settings' `topic_prefix`; every topic keeps its data (`retention.ms=-1`): datasets point into it by offset.",
        "",
        "| topic | key | value | partitions | written by | read by |",
        "|---|---|---|---|---|---|",
    ]
    for c in contracts:
        lines.append(f"| `{c.topic}` | {_cell(c.key)} | {_value_text(c, registry)} | {_cell(c.partitions)} | "
                     f"{_cell('; '.join(c.writers))} | {_cell('; '.join(c.readers))} |")
    lines += ["", "## Topics"]
    for c in contracts:
        lines += ["", f"### `{c.topic}`", "",
                  f"- key: {c.key}",
                  f"- value: {_value_text(c, registry)}: {c.value_note}",
                  f"- partitions: {c.partitions}",
                  f"- written by: {'; '.join(c.writers)}",
                  f"- read by: {'; '.join(c.readers)}"]
        if c.headers:
            lines.append("- headers: " + "; ".join(f"`{name}`: {meaning}" for name, meaning in c.headers))
    lines += ["", "## Schemas"]
    for name in registry.names():
        lines += _schema_section(name, registry.versions(name), [c.topic for c in contracts if c.value == name])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.contracts", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOC_PATH, help="where to write (default: docs/topics.md)")
    parser.add_argument("--check", action="store_true", help="only say whether the file is up to date (exit 1 if not)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
