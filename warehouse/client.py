"""Open the warehouse: embedded chDB on a folder, or a ClickHouse server.

Both go through clickhouse-connect, so the SQL and the client API are the
same; only opening differs. chDB lets one process own one folder, so the
embedded client is opened once per process and shared.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from deploy.settings import Settings
from schemas.errors import ConfigurationError
from warehouse.errors import WarehouseRejected, WarehouseUnavailable
from warehouse.tables import (
    TABLES,
    add_missing_columns_sql,
    column_names,
    create_table_sql,
    schema_differences,
)
from warehouse.trace_index import TraceIndex

log = logging.getLogger(__name__)

# Server-side error names that mean "try again later", not "your data is wrong".
_TRANSIENT_MARKERS = (
    "TOO_MANY_PARTS",
    "MEMORY_LIMIT_EXCEEDED",
    "TIMEOUT_EXCEEDED",
    "SOCKET_TIMEOUT",
    "NETWORK_ERROR",
    "TOO_MANY_SIMULTANEOUS_QUERIES",
    "Cannot lock file",
)

_embedded_lock = threading.Lock()
_embedded: dict[str, Any] = {}


class _Access:
    """What every Warehouse on one client shares: one call at a time, and a count of writes.

    chDB must never see two threads at once, and a server client's session
    refuses concurrent queries; the lock serializes both. ``writes`` lets a
    reader in the process that owns an embedded warehouse (the only writer)
    tell whether anything changed since it last looked.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.writes = 0


_embedded_access = _Access()


def _embedded_client(path: Path) -> Any:
    """The process-wide chDB client; a second folder in one process is refused."""
    key = str(path.resolve())
    with _embedded_lock:
        if key not in _embedded:
            if _embedded:
                (owned,) = _embedded
                raise ConfigurationError(
                    f"this process already owns the chDB warehouse at {owned}; chDB allows one folder "
                    f"per process, so {key} cannot be opened too. Use one TRACESTREAM_HOME per process "
                    "or set TRACESTREAM_CLICKHOUSE_URL to a ClickHouse server."
                )
            path.mkdir(parents=True, exist_ok=True)
            try:
                _embedded[key] = clickhouse_connect.get_client(dsn=f"chdb://{key}")
            except Exception as exc:  # chDB reports a held folder lock as a generic error
                raise WarehouseUnavailable(
                    f"cannot open the chDB warehouse at {key}: {exc}. Another process (a running "
                    "`tracestream worker`?) may own it; ask that process (e.g. `tracestream stats` "
                    "goes through its HTTP endpoint) or stop it."
                ) from exc
        return _embedded[key]


def classify(exc: Exception, what: str) -> Exception:
    """Map a clickhouse-connect error onto retriable or not."""
    text = str(exc)
    if isinstance(exc, OperationalError) or any(marker in text for marker in _TRANSIENT_MARKERS):
        return WarehouseUnavailable(f"{what}: the warehouse is unavailable ({text.strip()[:500]})")
    return WarehouseRejected(f"{what}: the warehouse refused it ({text.strip()[:500]})")


class Warehouse:
    """Synchronous access to the tracestream tables of one database.

    Calls block; async callers run them on a thread of their own (the
    materializer's writer, the API's reader). Calls on one client take turns
    (``_Access.lock``), so chDB never sees two threads at once even when the
    materializer and the API share the embedded warehouse.
    """

    def __init__(self, client: Any, database: str, *, embedded: bool, trace_index: TraceIndex | None = None) -> None:
        self.client = client
        self.database = database
        self.embedded = embedded
        self.trace_index = trace_index
        """trace_id → answer, beside an embedded warehouse (``warehouse.trace_index``); None with a server."""
        self._access = _embedded_access if embedded else _Access()

    @classmethod
    def connect(cls, settings: Settings, database: str | None = None) -> Warehouse:
        """Open the configured warehouse and make sure its tables exist.

        Raises:
            WarehouseUnavailable: the server cannot be reached, or the chDB folder is owned elsewhere.
            ConfigurationError: this process already owns another chDB folder.
        """
        database = database or settings.clickhouse_database
        try:
            if settings.clickhouse_url:
                client = clickhouse_connect.get_client(dsn=settings.clickhouse_url)
                embedded = False
            else:
                client = _embedded_client(settings.warehouse_dir)
                embedded = True
        except ClickHouseError as exc:
            raise classify(exc, f"connecting to {settings.clickhouse_url}") from exc
        index = TraceIndex.beside(settings.warehouse_dir, database) if embedded else None
        warehouse = cls(client, database, embedded=embedded, trace_index=index)
        warehouse.ensure_tables()
        return warehouse

    @property
    def description(self) -> str:
        return f"{'chdb' if self.embedded else 'clickhouse'}:{self.database}"

    def ensure_tables(self) -> None:
        """Create what is missing and migrate what an older version made: its tables gain the columns added since.

        Run on every start-up (``connect``), so a new schema version's column
        reaches an existing warehouse before the first insert that needs it.
        """
        self.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        present = self.columns()
        for table in TABLES:
            self.command(create_table_sql(self.database, table))
            if table in present:  # made by an older version: add the columns added since
                for alter in add_missing_columns_sql(self.database, table, set(present[table])):
                    log.info("migrating the warehouse: %s", alter)
                    self.command(alter)
        if self.trace_index is not None:
            [(uuid,)] = self.query("SELECT toString(uuid) FROM system.tables WHERE database = {db:String} "
                                   "AND name = 'traces'", {"db": self.database})
            self.trace_index.mirror(uuid)

    def columns(self) -> dict[str, dict[str, str]]:
        """Each table of this database: column name → type, as the warehouse holds them."""
        tables: dict[str, dict[str, str]] = {}
        for table, name, type_ in self.query(
                "SELECT table, name, type FROM system.columns WHERE database = {db:String}", {"db": self.database}):
            tables.setdefault(table, {})[name] = type_
        return tables

    def schema_differences(self, table: str) -> list[str]:
        """How ``table`` differs from what this version writes (none: the schema is not the problem)."""
        return schema_differences(self.database, table, self.columns().get(table))

    def index_traces(self, topic: str, last_offsets: dict[int, int]) -> int:
        """Bring the trace index up to these offsets of ``topic`` (no-op without one); rows copied."""
        if self.trace_index is None:
            return 0
        return self.trace_index.index_through(self, topic, last_offsets)

    def drop_tables(self) -> None:
        for table in TABLES:
            self.command(f"DROP TABLE IF EXISTS `{self.database}`.`{table}`")

    @property
    def generation(self) -> int | None:
        """A number that changes whenever this process writes; None when others may write too.

        Only an embedded warehouse has one: its folder belongs to this process,
        so every write goes through here. A ClickHouse server has other writers.
        """
        return self._access.writes if self.embedded else None

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        try:
            with self._access.lock:
                self._access.writes += 1
                return self.client.command(sql, parameters=parameters)
        except ClickHouseError as exc:
            raise classify(exc, f"running {sql.split(chr(10))[0][:80]!r}") from exc

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Rows of a query; values only ever arrive through ``parameters``."""
        try:
            with self._access.lock:
                return self.client.query(sql, parameters=parameters).result_rows
        except ClickHouseError as exc:
            raise classify(exc, f"querying {sql.split(chr(10))[0][:80]!r}") from exc

    def query_arrow(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """A pyarrow Table of a query: nested columns stay in C++ until asked for."""
        try:
            with self._access.lock:
                return self.client.query_arrow(sql, parameters=parameters, use_strings=True)
        except ClickHouseError as exc:
            raise classify(exc, f"querying {sql.split(chr(10))[0][:80]!r}") from exc

    def query_json(self, sql: str, parameters: dict[str, Any] | None = None) -> bytes:
        """The engine's own JSONEachRow output of a query: one JSON object per line.

        Serializing in ClickHouse (64-bit integers unquoted, times in ISO 8601)
        costs far less than building Python objects and encoding them again.
        The settings go in the SQL, because per-call settings cost chDB extra
        statements around every query.
        """
        sql = f"{sql} SETTINGS output_format_json_quote_64bit_integers = 0, date_time_output_format = 'iso'"
        try:
            with self._access.lock:
                return self.client.raw_query(sql, parameters=parameters, fmt="JSONEachRow")
        except ClickHouseError as exc:
            raise classify(exc, f"querying {sql.split(chr(10))[0][:80]!r}") from exc

    def insert(self, table: str, columns: Sequence[Sequence[Any]]) -> None:
        """Insert column-oriented data; once this returns the rows are durable."""
        try:
            with self._access.lock:
                self._access.writes += 1
                self.client.insert(
                    f"{self.database}.{table}",
                    columns,
                    column_names=column_names(table),
                    column_oriented=True,
                )
        except ClickHouseError as exc:
            raise classify(exc, f"inserting {len(columns[0]) if columns else 0} rows into {table}") from exc
