"""The local Kafka broker: a real Apache Kafka (KRaft, one node) run from Maven jars.

The log is the source of truth, so tests and the local stack run the real
broker rather than a fake: offsets, consumer groups, transactions and
rebalances behave exactly as they will on a user's cluster. The broker's
jars come from Maven Central once per version (``fetch_broker_jars``); a
data folder is formatted once and reused, so records survive restarts.

A data folder holds:

``server.properties``, ``log4j2.properties``
    written on every start (the ports may change between starts).
``cluster.json``
    the cluster id and the ports of the last start; a restart reuses those
    ports when they are free, so a bootstrap address stays stable.
``broker.json``
    pid, bootstrap, version and start time of the running broker, so that
    another process (``tracestream stack status|down``) can find it.
``broker.log``
    the JVM's output, log4j at WARN; the previous run's is ``broker.log.1``.
``kraft/``
    ``log.dirs``: the topic data and the metadata log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import signal
import subprocess
import time
import uuid
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from deploy.broker_config import properties
from deploy.host import (
    LOG_TAIL_LINES,
    file_lock,
    free_ports,
    now_iso,
    port_free,
    port_open,
    process_cmdline,
    signal_group,
    tail_lines,
    write_json,
)
from deploy.kafka_admin import count_brokers, run_sync
from deploy.kafka_clients import KafkaClients
from deploy.kafka_errors import BrokerError
from deploy.kafka_jars import fetch_broker_jars, require_tool
from deploy.settings import Settings

_NODE_ID = 1
#: The one mechanism the local broker offers on its SASL listener.
_SCRAM = "SCRAM-SHA-512"
#: The broker's own SCRAM user: the inter-broker listener is the SASL one, so it authenticates too.
_BROKER_USER = "tracestream-broker"
# StorageTool's --add-scram splits on ',' ']' '='; keep names and passwords out of its syntax.
_SCRAM_TEXT = re.compile(r"[^,\[\]=\s\"]+")


@dataclass(frozen=True)
class BrokerState:
    """What ``broker.json`` records about a running local broker."""

    pid: int
    """The JVM's process id; also its process group (it leads its own session)."""
    bootstrap: str
    """``127.0.0.1:PORT`` of the client listener (PLAINTEXT, or SASL_PLAINTEXT with ``sasl_users``)."""
    version: str
    """The Kafka version the JVM runs."""
    started_at: str
    """ISO 8601 UTC time the JVM was launched."""


@dataclass(frozen=True)
class _ClusterRecord:
    """What ``cluster.json`` keeps between starts of one data folder."""

    cluster_id: str
    port: int
    controller_port: int
    formatted_with: str
    scram_users: list[str] | None = None
    """The SCRAM users the storage was formatted with; None for a PLAINTEXT broker."""
    broker_password: str | None = None
    """The broker's own SCRAM password (inter-broker listener), made at format time."""


def read_broker_state(data_dir: Path) -> BrokerState | None:
    """Return the running broker recorded in ``data_dir``, or None.

    The record is trusted only if its pid is alive and is the Kafka JVM of
    this data folder (pids are reused); a stale record is removed.
    """
    data_dir = data_dir.expanduser().resolve()
    path = data_dir / "broker.json"
    try:
        state = BrokerState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    if _is_our_jvm(state.pid, data_dir / "server.properties"):
        return state
    path.unlink(missing_ok=True)
    return None


class LocalKafkaBroker:
    """One Kafka broker+controller JVM on loopback, with its data in ``data_dir``.

    Start it with ``start()`` (or ``with LocalKafkaBroker(settings) as broker``),
    stop it with ``stop()``. A broker started with ``detach=True`` outlives
    this process; find it again from any process with ``attach()``.

    Args:
        settings: the tracestream settings (version, heap, cache folder, partitions).
        data_dir: where the broker keeps its data; defaults to ``settings.kafka_dir``.
        sasl_users: ``{name: password}``: clients must then authenticate with
            SASL_PLAINTEXT + SCRAM-SHA-512 (as on a managed cluster). Users are
            written when the data folder is formatted, so a folder keeps the
            users of its first start.
    """

    def __init__(self, settings: Settings, data_dir: Path | None = None, *,
                 sasl_users: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self.data_dir = (data_dir if data_dir is not None else settings.kafka_dir).expanduser().resolve()
        for text in [*(sasl_users or {}).keys(), *(sasl_users or {}).values()]:
            if not _SCRAM_TEXT.fullmatch(text):
                raise BrokerError("SCRAM user names and passwords of the local broker may not be empty or hold "
                                  "spaces, ',', '=', '[', ']' or '\"'")
        self._sasl_users = dict(sasl_users) if sasl_users else None
        self._broker_password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._state: BrokerState | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def attach(cls, settings: Settings, data_dir: Path | None = None) -> LocalKafkaBroker | None:
        """Return a handle on the broker already running on ``data_dir``, or None.

        The handle can ``stop()`` it even though another process started it.
        """
        broker = cls(settings, data_dir)
        broker._state = read_broker_state(broker.data_dir)
        return broker if broker._state is not None else None

    # ---- what it is

    @property
    def bootstrap(self) -> str | None:
        """``127.0.0.1:PORT`` while running, else None."""
        return self._state.bootstrap if self._state else None

    def clients(self) -> KafkaClients:
        """Clients as the broker itself: PLAINTEXT, or SASL with the broker's own SCRAM user."""
        assert self._state is not None, "the broker is not running"
        if self._sasl_users is None:
            return KafkaClients(self._state.bootstrap)
        return KafkaClients(self._state.bootstrap, "SASL_PLAINTEXT", _SCRAM, _BROKER_USER, self._broker_password)

    @property
    def pid(self) -> int | None:
        """The JVM's pid while running, else None."""
        return self._state.pid if self._state else None

    @property
    def state(self) -> BrokerState | None:
        """The running broker's record, or None."""
        return self._state

    @property
    def log_path(self) -> Path:
        """The JVM's output; the first place to look when the broker misbehaves."""
        return self.data_dir / "broker.log"

    @property
    def _props_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    def is_running(self) -> bool:
        """Whether the JVM this handle knows about is still alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._state is not None and _is_our_jvm(self._state.pid, self._props_path)

    # ---- start

    def start(self, timeout_s: float = 60, *, detach: bool = False) -> str:
        """Start the broker and wait until it serves metadata; return its bootstrap.

        The first start fetches the jars (once per machine) and formats the
        data folder; later starts reuse both, so the data survives. Calling
        ``start()`` on a running handle returns its bootstrap.

        Args:
            timeout_s: how long to wait for the broker to answer.
            detach: leave the broker running when this process exits (the
                local stack); otherwise it is stopped when this handle is
                garbage-collected or the interpreter exits (tests).

        Raises:
            BrokerError: the jars could not be fetched, another broker runs on
                this data folder, or the JVM exited or did not answer in
                ``timeout_s`` (the message quotes the end of ``broker.log``).
        """
        if self.is_running():
            assert self._state is not None
            return self._state.bootstrap
        if self._state is not None:  # this handle's broker died; drop what it knew
            self._forget()
        libs = fetch_broker_jars(self._settings)
        java = require_tool("java")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".launcher.lock"):
            other = read_broker_state(self.data_dir)
            if other is not None:
                raise BrokerError(
                    f"A broker already runs on {self.data_dir} (pid {other.pid}, {other.bootstrap}). "
                    "Use LocalKafkaBroker.attach() to reach it, or stop it with `tracestream stack down`."
                )
            record = self._prepare(java, libs)
            self._spawn(java, libs, record)
            try:
                self._await_ready(timeout_s)
            except BaseException:
                self._terminate(timeout_s=10)
                raise
        if detach:
            self._release()
        assert self._state is not None
        return self._state.bootstrap

    def _prepare(self, java: str, libs: Path) -> _ClusterRecord:
        """Choose ports, write the config files and format the storage once."""
        previous = self._load_cluster_record()
        if previous and port_free(previous.port) and port_free(previous.controller_port):
            port, controller_port = previous.port, previous.controller_port
        else:
            port, controller_port = free_ports(2)
        formatted = (self._kraft_dir / "meta.properties").is_file()
        cluster_id = (previous.cluster_id if previous else None) or _read_meta_cluster_id(self._kraft_dir)
        users = sorted(self._sasl_users) if self._sasl_users is not None else None
        if formatted and (previous.scram_users if previous else None) != users:
            raise BrokerError(
                f"{self.data_dir} was formatted with SCRAM users {previous.scram_users if previous else None}, "
                f"not {users}; SCRAM users are added when the storage is formatted, so use a fresh data folder"
            )
        broker_password = previous.broker_password if (previous and formatted) else None
        if users is not None and broker_password is None:
            broker_password = secrets.token_hex(16)
        self._broker_password = broker_password
        record = _ClusterRecord(
            cluster_id=cluster_id or _kafka_uuid(),
            port=port,
            controller_port=controller_port,
            formatted_with=previous.formatted_with if (previous and formatted) else self._settings.kafka_version,
            scram_users=users,
            broker_password=broker_password,
        )
        self._props_path.write_text(_server_properties(self._settings, self._kraft_dir, record), encoding="utf-8")
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES, encoding="utf-8")
        if not formatted:
            self._format(java, libs, record.cluster_id)
        write_json(self.data_dir / "cluster.json", asdict(record))
        return record

    def _load_cluster_record(self) -> _ClusterRecord | None:
        try:
            return _ClusterRecord(**json.loads((self.data_dir / "cluster.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def _format(self, java: str, libs: Path, cluster_id: str) -> None:
        """Run Kafka's StorageTool to write meta.properties and the bootstrap metadata."""
        cmd = [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
               "-t", cluster_id, "-c", str(self._props_path)]  # fmt: skip
        if self._sasl_users is not None:
            users = {**self._sasl_users, _BROKER_USER: self._broker_password}
            for name, password in users.items():
                cmd += ["--add-scram", f"{_SCRAM}=[name={name},password={password}]"]
        result = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise BrokerError(
                f"Formatting the broker storage in {self._kraft_dir} failed (exit {result.returncode}). "
                "If the folder holds data from another cluster, move it away or pick another data folder. "
                f"StorageTool said:\n{tail_lines(result.stdout + result.stderr, LOG_TAIL_LINES)}"
            )

    def _spawn(self, java: str, libs: Path, record: _ClusterRecord) -> None:
        """Launch the JVM in its own session, output to broker.log, and record it."""
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name("broker.log.1"))
        cmd = [
            java,
            f"-Xmx{self._settings.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self._props_path),
        ]
        with open(self.log_path, "ab") as log:
            # Own session: Ctrl-C in the terminal that ran `stack up` does not reach
            # the broker, and stop() can signal the whole group.
            self._proc = subprocess.Popen(
                cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._state = BrokerState(
            pid=self._proc.pid,
            bootstrap=f"127.0.0.1:{record.port}",
            version=self._settings.kafka_version,
            started_at=now_iso(),
        )
        write_json(self.data_dir / "broker.json", asdict(self._state))
        self._finalizer = weakref.finalize(self, signal_group, self._proc.pid, signal.SIGTERM)

    def _await_ready(self, timeout_s: float) -> None:
        """Poll until the broker lists itself in a metadata response."""
        assert self._proc is not None and self._state is not None
        deadline = time.monotonic() + timeout_s
        port = int(self._state.bootstrap.rsplit(":", 1)[1])
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"The Kafka broker exited with code {code} while starting. "
                    f"Last lines of {self.log_path}:\n{self._log_tail()}"
                )
            if port_open(port) and run_sync(count_brokers(self.clients(), timeout_s=2.0)) > 0:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"The Kafka broker did not answer on {self._state.bootstrap} within {timeout_s:.0f} s. "
                    f"Last lines of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _release(self) -> None:
        """Let the JVM outlive this process: no finalizer, no Popen handle."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        # Dropping a live Popen warns (ResourceWarning); here that is the intent.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self._proc = None

    # ---- stop

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), then SIGKILL after ``timeout_s``.

        Does nothing if it is not running. The data stays; ``start()`` again
        on the same folder finds every record.
        """
        if self._state is None:
            return
        with file_lock(self.data_dir / ".launcher.lock"):
            self._terminate(timeout_s)

    def _terminate(self, timeout_s: float) -> None:
        assert self._state is not None
        pid = self._state.pid
        if self._proc is not None:
            signal_group(pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                signal_group(pid, signal.SIGKILL)
                self._proc.wait()
        elif _is_our_jvm(pid, self._props_path):  # attached: the pid was checked to be ours
            signal_group(pid, signal.SIGTERM)
            if not _wait_gone(pid, self._props_path, timeout_s):
                signal_group(pid, signal.SIGKILL)
                _wait_gone(pid, self._props_path, 10)
        self._forget()

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        recorded = self.data_dir / "broker.json"
        with contextlib.suppress(OSError, ValueError):
            if json.loads(recorded.read_text(encoding="utf-8")).get("pid") == self.pid:
                recorded.unlink()
        self._proc = None
        self._state = None

    def _log_tail(self) -> str:
        try:
            return tail_lines(self.log_path.read_text(encoding="utf-8", errors="replace"), LOG_TAIL_LINES)
        except OSError:
            return "(no log written)"

    # ---- context manager

    def __enter__(self) -> LocalKafkaBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap or "stopped"
        return f"LocalKafkaBroker({str(self.data_dir)!r}, {where})"


def _server_properties(settings: Settings, kraft_dir: Path, record: _ClusterRecord) -> str:
    """A single-node KRaft config tuned for a developer machine and for keeping data.

    With SCRAM users the client listener is SASL_PLAINTEXT and is also the
    inter-broker listener (the broker authenticates as its own user), so no
    unauthenticated door stays open; the controller listener stays PLAINTEXT
    on loopback, as the controller only talks to this same JVM.
    """
    client = "SASL_PLAINTEXT" if record.scram_users is not None else "PLAINTEXT"
    props = {
        "process.roles": "broker,controller",
        "node.id": str(_NODE_ID),
        "controller.quorum.voters": f"{_NODE_ID}@127.0.0.1:{record.controller_port}",
        "listeners": f"{client}://127.0.0.1:{record.port},CONTROLLER://127.0.0.1:{record.controller_port}",
        "advertised.listeners": f"{client}://127.0.0.1:{record.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": client,
        "log.dirs": str(kraft_dir),
        **properties(settings),  # what every launcher of the broker sets alike (deploy/broker_config.py)
    }
    if record.scram_users is not None:
        props.update({
            "sasl.enabled.mechanisms": _SCRAM,
            "sasl.mechanism.inter.broker.protocol": _SCRAM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{_BROKER_USER}" password="{record.broker_password}";'
            ),
        })
    lines = ["# Written by tracestream (deploy/kafka_broker.py) on every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


# Everything to stdout (redirected to broker.log) at WARN, plus the one INFO
# line that says the server started, which makes a slow start legible.
_LOG4J2_PROPERTIES = """\
status = warn
name = tracestream-broker
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d{ISO8601}] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def _kafka_uuid() -> str:
    """A cluster id as Kafka's ``Uuid.randomUuid()`` makes it, without starting a JVM.

    URL-safe base64 of 16 random bytes, unpadded; Kafka rejects ids that
    start with '-' (they read as command-line flags).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _read_meta_cluster_id(kraft_dir: Path) -> str | None:
    """The cluster id in an already formatted folder whose cluster.json was lost."""
    with contextlib.suppress(OSError):
        for line in (kraft_dir / "meta.properties").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
    return None


def _is_our_jvm(pid: int, props_path: Path) -> bool:
    """Whether ``pid`` is the Kafka JVM started on this data folder (pids get reused)."""
    cmdline = process_cmdline(pid)
    return cmdline is not None and "kafka.Kafka" in cmdline and str(props_path) in cmdline


def _wait_gone(pid: int, props_path: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_our_jvm(pid, props_path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
