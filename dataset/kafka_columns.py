"""Messages of traces.valid decoded into Arrow columns by ClickHouse's Avro reader.

fastavro builds a Python dict per record, 15–22 µs for a ~1.9 KB trace: about
twice what reading the record from Kafka costs, so a decoded replay could
not keep up with the log. Here a batch's Avro bodies are framed as an Avro
object container file (one block per record, so no record can shift
another; the message's 10-byte single-object header read as a ``fixed``
field, so its bytes go in unsliced) and read by chDB's
``file(..., 'Avro')``, which hands back the dataset records' columns
(``RECORD_SCHEMA``) as Arrow, with no Python object per record.

chDB lets a process open one engine, and the reading process may own the
warehouse's; so this runs in worker processes (``dataset.kafka_tables``),
each with an in-memory engine of its own.
A batch this path cannot take (a writer schema that needs more than
trailing null defaults, a body that does not decode, an unknown
fingerprint) gives None, and the caller decodes it with ``schemas.codec``,
which names the offending offset.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from dataset.record_table import RECORD_SCHEMA
from schemas.codec import HEADER_LEN, MAGIC, appended_defaults
from schemas.contracts import TRACE
from schemas.errors import UnknownFingerprintError
from schemas.registry import SchemaRegistry
from schemas.trace_fields import TRACE_FIELDS

_HEADER_FIELD = {"name": "single_object_header", "type": {"type": "fixed", "name": "SingleObjectHeader", "size": HEADER_LEN}}
_SYNC = b"tracestream-sync"  # any 16 bytes; the reader checks each block ends with them
_SHM_NEEDED = 1 << 30
_STEPS_TYPE = "Array(Tuple(i Int32, type String, content String))"


def _read_type(name: str) -> str:
    """The ClickHouse type a Trace field is read as (plain types: no LowCardinality, steps as named tuples)."""
    if name == "steps":
        return _STEPS_TYPE
    field = next(f for f in TRACE_FIELDS if f.name == name)
    (column,) = field.columns
    if column.type.startswith("DateTime64"):  # the Avro long as it is: DateTime64 stops at 1900 and 2299
        return "Int64"
    return re.sub(r"LowCardinality\((.*)\)", r"\1", column.type)


_TRACE_NAMES = tuple(f.name for f in TRACE_FIELDS)
_STRUCTURE = ", ".join(f"{name} {_read_type(name)}" for name in _TRACE_NAMES)


def _varint(n: int) -> bytes:
    """Avro's zig-zag varint of a non-negative ``n``."""
    n <<= 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint(n) for n in range(1 << 13)]  # block counts and most record sizes, looked up


def _string(data: bytes) -> bytes:
    return _varint(len(data)) + data


def container_header(writer: dict) -> bytes:
    """An object container file's header for records of ``writer`` behind their single-object header."""
    schema = {**writer, "fields": [_HEADER_FIELD, *writer["fields"]]}
    meta = (_SMALL[2] + _string(b"avro.schema") + _string(json.dumps(schema).encode())
            + _string(b"avro.codec") + _string(b"null") + _SMALL[0])
    return b"Obj\x01" + meta + _SYNC


def container_blocks(values: Sequence[bytes]) -> bytes:
    """One block per message: count 1, size, the message as it is, the sync marker."""
    one, small, sync = _SMALL[1], _SMALL, _SYNC
    parts: list[Any] = []
    append = parts.append
    for value in values:
        size = len(value)
        append(one)
        append(small[size] if size < 8192 else _varint(size))
        append(value)
        append(sync)
    return b"".join(parts)


class ColumnDecoder:
    """Decodes batches of one registry's Trace messages into ``RECORD_SCHEMA`` tables; one per process."""

    def __init__(self, registry: SchemaRegistry, parent: str | None = None) -> None:
        """``parent``: where to make this decoder's folder (default: ``scratch_parent()``)."""
        import chdb  # here, not at import: it loads the engine (a 500 MB library)

        self._engine = chdb.connect(":memory:")
        # chDB raises its query errors as chdb._exceptions.ChdbError (a RuntimeError), not chdb.ChdbError.
        self._failures = (chdb.ChdbError, RuntimeError, OSError)
        self._registry = registry
        self._latest = registry.latest(TRACE)
        self.folder = tempfile.mkdtemp(prefix="tracestream-decode-", dir=parent or scratch_parent())
        """Where this decoder's files are (removed by ``close``)."""
        self._headers: dict[bytes, bytes | None] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        """Write and read back a little Avro, so the engine's first-use costs (~0.3 s) fall here, not on a batch."""
        path, structure = _literal(os.path.join(self.folder, "warm-up.avro")), _literal(_STRUCTURE)
        self._engine.query(f"INSERT INTO FUNCTION file({path}, 'Avro', {structure}) "
                           f"SELECT * FROM generateRandom({structure}, 1, 1024, 8) LIMIT 5000")
        self._engine.query(f"SELECT * FROM file({path}, 'Avro', {structure})", "ArrowTable")
        os.remove(os.path.join(self.folder, "warm-up.avro"))

    def _settle(self) -> None:
        """After a failed query chDB 26.9 hands the next Arrow result back empty, once: spend that on nothing."""
        with contextlib.suppress(*self._failures, pa.ArrowInvalid):
            self._engine.query("SELECT 1", "ArrowTable")

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _header(self, fingerprint: bytes) -> bytes | None:
        """The container header for a writer, or None when reading it as the latest needs more than nulls."""
        if fingerprint not in self._headers:
            header = None
            try:
                writer = self._registry.by_fingerprint(fingerprint)
            except UnknownFingerprintError:  # the codec's error names it
                writer = None
            if writer is not None and writer.name == TRACE:
                added = appended_defaults(writer.definition, self._latest.definition)
                if writer.fingerprint == self._latest.fingerprint or (
                        added is not None and all(value is None for value in added.values())):
                    header = container_header(writer.definition)
            self._headers[fingerprint] = header
        return self._headers[fingerprint]

    def decode(self, topic: str, partition: int, offsets: Sequence[int], values: Sequence[bytes | None]) -> pa.Table | None:
        """The batch's dataset records as one table in offset order, or None when it must go record by record."""
        groups: dict[bytes, tuple[list[int], list[bytes]]] = {}
        for position, value in enumerate(values):
            if not value or value[:2] != MAGIC or len(value) <= HEADER_LEN:
                return None
            group = groups.get(value[2:HEADER_LEN])
            if group is None:
                group = groups[value[2:HEADER_LEN]] = ([], [])
            group[0].append(position)
            group[1].append(value)
        paths = []
        try:
            for n, (fingerprint, (_, group_values)) in enumerate(groups.items()):
                header = self._header(fingerprint)
                if header is None:
                    return None
                paths.append(os.path.join(self.folder, f"batch-{n:04d}.avro"))
                with open(paths[-1], "wb") as out:
                    out.write(header)
                    out.write(container_blocks(group_values))
            table = self._engine.query(_select_sql(self.folder), "ArrowTable")
        except self._failures:  # a body that does not decode (its offset named by the codec), a full disk
            self._settle()
            return None
        finally:
            for path in paths:
                os.remove(path)
        if table.num_rows != len(values):
            return None
        if len(groups) > 1:  # rows come file by file: put them back in the batch's order
            order = [position for positions, _ in groups.values() for position in positions]
            table = table.take(pa.array(order).to_numpy().argsort())
        n = table.num_rows
        table = table.append_column("topic", pa.array([topic] * n, pa.string()))
        table = table.append_column("partition", pa.array([partition] * n, pa.int32()))
        return table.append_column("offset", pa.array(offsets, pa.int64())).cast(RECORD_SCHEMA)


def scratch_parent() -> str | None:
    """/dev/shm when it has room for a few batches (a container's is often 64 MB), else the temp folder."""
    try:
        return "/dev/shm" if shutil.disk_usage("/dev/shm").free > _SHM_NEEDED and os.access("/dev/shm", os.W_OK) else None
    except OSError:
        return None


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _select_sql(folder: str) -> str:
    files = _literal(os.path.join(folder, "batch-*.avro"))
    return (f"SELECT {', '.join(_TRACE_NAMES)} FROM file({files}, 'Avro', {_literal(_STRUCTURE)}) "
            "ORDER BY _file, _row_number SETTINGS input_format_avro_allow_missing_fields = 1, max_threads = 1, "
            "output_format_arrow_compression_method = 'none'")  # lz4 by default: ~2 µs a record to pack and unpack
