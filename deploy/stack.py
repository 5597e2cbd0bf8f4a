"""The local stack behind ``tracestream stack up|down|status`` and ``tracestream demo``.

Kafka is either the user's cluster (``TRACESTREAM_KAFKA_BOOTSTRAP``) or the
local broker this module starts detached, so it outlives the CLI command
that started it; any later process finds it through ``broker.json`` in the
broker's data folder. The warehouse is only described here: it is embedded
chDB, owned by the process that opens it, or the configured ClickHouse server.
The home's other long-lived processes (serve, workers, trainer, a demo) are
found through their records (``deploy.running``), so ``stack down`` stops them
before the broker they use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from deploy.kafka_broker import LocalKafkaBroker, read_broker_state
from deploy.kafka_clients import KafkaClients
from deploy.kafka_errors import BrokerError
from deploy.running import RunningProcess, running_processes, stop_processes
from deploy.settings import Settings
from schemas.errors import TracestreamError

__all__ = ["NotRunningHere", "StackStatus", "kafka_bootstrap", "kafka_clients", "stack_down", "stack_status",
           "stack_stop", "stack_up"]


class NotRunningHere(TracestreamError):
    """A pid or command named to ``stack stop`` is not among what this home runs."""


@dataclass(frozen=True)
class StackStatus:
    """Where the parts of the stack are, as seen from this process."""

    kafka_bootstrap: str | None
    """Where clients connect; None when the local broker is not running."""
    kafka_managed: bool
    """True for the local broker tracestream starts; False for the user's cluster."""
    kafka_pid: int | None
    """The local broker's JVM pid while it runs."""
    kafka_version: str | None
    """The local broker's Kafka version while it runs (unknown for a user's cluster)."""
    clickhouse: str
    """``chdb:<path>`` for the embedded engine, or the server URL without its password."""
    processes: tuple[RunningProcess, ...] = ()
    """The home's serve, workers, trainer and demos that run now."""
    stale: tuple[RunningProcess, ...] = ()
    """Records of processes that no longer run; removed while this status was read."""

    @property
    def kafka_up(self) -> bool:
        """Whether there is a Kafka to talk to (for a user's cluster: configured, not probed)."""
        return self.kafka_bootstrap is not None


def kafka_bootstrap(settings: Settings) -> str | None:
    """The bootstrap clients should use: the configured cluster, else the running local broker, else None."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    state = read_broker_state(settings.kafka_dir)
    return state.bootstrap if state else None


def kafka_clients(settings: Settings) -> KafkaClients | None:
    """Clients for ``kafka_bootstrap(settings)`` with the settings' security; None when there is no Kafka."""
    bootstrap = kafka_bootstrap(settings)
    return KafkaClients.from_settings(settings, bootstrap) if bootstrap else None


def stack_up(settings: Settings, timeout_s: float = 60) -> StackStatus:
    """Start what the local stack needs and return where it is.

    With ``TRACESTREAM_KAFKA_BOOTSTRAP`` set, Kafka is the user's and nothing
    is started. Otherwise the local broker is started detached (it keeps
    running after this process exits). Topics are declared by whoever uses
    them (``streams.topics.ensure_pipeline_topics``), with the partition
    counts and retention their contracts need. Calling it again while the
    broker runs changes nothing.

    Raises:
        deploy.kafka_errors.BrokerError: the broker could not be fetched or started.
    """
    if not settings.kafka_bootstrap:
        _start_local_broker(settings, timeout_s)
    return stack_status(settings)


def _start_local_broker(settings: Settings, timeout_s: float) -> str:
    """Start the local broker detached unless it runs already; return its bootstrap."""
    running = LocalKafkaBroker.attach(settings)
    if running is not None:
        return running.start()  # returns the bootstrap of a running broker
    try:
        return LocalKafkaBroker(settings).start(timeout_s=timeout_s, detach=True)
    except BrokerError:
        running = LocalKafkaBroker.attach(settings)  # a concurrent `stack up` won the race
        if running is None:
            raise
        return running.start()


def stack_stop(settings: Settings, targets: Sequence[str] = (), timeout_s: float = 30) -> list[RunningProcess]:
    """Stop the home's processes named by pid or command (``serve``, ``worker``, ...); all of them when none is named.

    Only recorded processes are signalled, so a pid that has meanwhile gone to
    another program is never touched. Returns what was stopped.

    Raises:
        NotRunningHere: a target names nothing this home runs (the message lists what runs).
    """
    running, _ = running_processes(settings)
    chosen = [r for r in running if not targets or str(r.pid) in targets or r.kind in targets]
    unknown = [t for t in targets if not any(str(r.pid) == t or r.kind == t for r in running)]
    if unknown:
        runs = ", ".join(r.describe() for r in running) or "nothing"
        raise NotRunningHere(f"{', '.join(unknown)}: not a process of {settings.home} (it runs {runs}); "
                             "`tracestream stack status` lists them")
    stop_processes(settings, chosen, timeout_s=timeout_s)
    return chosen


def stack_down(settings: Settings, timeout_s: float = 30) -> StackStatus:
    """Stop the home's processes, then the local broker if it runs (its data stays); a user's cluster is never touched."""
    stack_stop(settings, timeout_s=timeout_s)
    broker = LocalKafkaBroker.attach(settings)
    if broker is not None:
        broker.stop(timeout_s=timeout_s)
    return stack_status(settings)


def stack_status(settings: Settings) -> StackStatus:
    """Describe the stack without starting or probing anything (stale records of dead processes are removed)."""
    clickhouse = _describe_clickhouse(settings)
    running, stale = (tuple(found) for found in running_processes(settings))
    if settings.kafka_bootstrap:
        return StackStatus(settings.kafka_bootstrap, False, None, None, clickhouse, running, stale)
    state = read_broker_state(settings.kafka_dir)
    if state is None:
        return StackStatus(None, True, None, None, clickhouse, running, stale)
    return StackStatus(state.bootstrap, True, state.pid, state.version, clickhouse, running, stale)


def _describe_clickhouse(settings: Settings) -> str:
    if not settings.clickhouse_url:
        return f"chdb:{settings.warehouse_dir.expanduser().resolve()}"
    return _redact_password(settings.clickhouse_url)


def _redact_password(url: str) -> str:
    """The URL with its password replaced, so status output can be pasted anywhere."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))
