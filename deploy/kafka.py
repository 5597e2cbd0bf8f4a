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

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
import weakref
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.errors import TracestreamError

__all__ = [
    "DEFAULT_TOPIC_CONFIG",
    "BrokerError",
    "BrokerState",
    "BrokerUnreachableError",
    "LocalKafkaBroker",
    "ensure_topics",
    "ensure_topics_async",
    "fetch_broker_jars",
    "read_broker_state",
]

T = TypeVar("T")

#: Topic config every topic we create gets unless the caller overrides it:
#: datasets point into the log by offset, so nothing may be deleted by age.
DEFAULT_TOPIC_CONFIG: Mapping[str, str] = {"retention.ms": "-1"}

# Kafka's runtime dependencies ship slf4j 1.7 without a binding, which would
# send every broker log line to a no-op logger; this binding routes them to
# log4j2 so start-up failures show up in broker.log.
_SLF4J_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.4")
# Pinned so every machine resolves the same way, whatever its Maven's default.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_MAVEN_TIMEOUT_S = 900.0
_COMPLETE_MARKER = ".complete"
_LOG_TAIL_LINES = 30
_NODE_ID = 1
#: The one mechanism the local broker offers on its SASL listener.
_SCRAM = "SCRAM-SHA-512"
#: The broker's own SCRAM user: the inter-broker listener is the SASL one, so it authenticates too.
_BROKER_USER = "tracestream-broker"
# StorageTool's --add-scram splits on ',' ']' '='; keep names and passwords out of its syntax.
_SCRAM_TEXT = re.compile(r"[^,\[\]=\s\"]+")


class BrokerError(TracestreamError):
    """The local broker could not be fetched, formatted, started or stopped.

    Retrying the same call will not help: something on this machine (Java,
    Maven, the data folder) needs fixing first; the message says what.
    """


class BrokerUnreachableError(BrokerError):
    """A broker did not answer in time; it may be starting or briefly down."""

    retriable = True


# --------------------------------------------------------------------------
# Jars


def fetch_broker_jars(settings: Settings) -> Path:
    """Return the folder of the broker's runtime jars, downloading them once.

    The jars of ``org.apache.kafka:kafka_2.13:<settings.kafka_version>`` are
    resolved by Maven into ``<cache_dir>/kafka-<version>/libs``. The download
    goes to a staging folder that is renamed into place only when complete,
    so a killed download never leaves a half cache; a file lock makes
    concurrent callers (parallel test sessions, ``stack up``) wait for one
    download instead of racing.

    Raises:
        BrokerError: Java or Maven is missing, or Maven failed (the message
            quotes the end of Maven's output).
    """
    version = settings.kafka_version
    home = settings.cache_dir.expanduser().resolve() / f"kafka-{version}"
    libs = home / "libs"
    if _jars_complete(libs):
        return libs
    _require_tool("java")
    _require_tool("mvn")
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".fetch.lock"):
        if not _jars_complete(libs):  # another process may have finished meanwhile
            _download_jars(libs, version)
    return libs


def _jars_complete(libs: Path) -> bool:
    return (libs / _COMPLETE_MARKER).is_file()


def _download_jars(libs: Path, version: str) -> None:
    """Resolve the jars into a staging folder, then rename it to ``libs``."""
    for stale in libs.parent.glob(".staging-*"):  # left by a killed download; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=libs.parent))
    try:
        pom = staging / "pom.xml"
        pom.write_text(_pom_xml(version), encoding="utf-8")
        out = staging / "libs"
        _run_maven(pom, out, version)
        if not (out / f"kafka_2.13-{version}.jar").is_file():
            raise BrokerError(
                f"Maven finished but kafka_2.13-{version}.jar is not among the jars in {out}; "
                "check TRACESTREAM_KAFKA_VERSION names a published Kafka release."
            )
        marker = {"version": version, "jars": len(list(out.glob("*.jar"))), "fetched_at": _now_iso()}
        (out / _COMPLETE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
        if libs.exists():  # an incomplete copy from elsewhere; ours is whole
            shutil.rmtree(libs)
        out.rename(libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pom_xml(version: str) -> str:
    group, artifact, binding_version = _SLF4J_BINDING
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tracestream.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{binding_version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _run_maven(pom: Path, out: Path, version: str) -> None:
    cmd = [
        _require_tool("mvn"),
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={out}",
    ]
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_MAVEN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"Maven did not finish fetching Kafka {version} in {_MAVEN_TIMEOUT_S:.0f} s; "
            "check that Maven Central (or your mirror in ~/.m2/settings.xml) is reachable."
        ) from exc
    if result.returncode != 0:
        tail = _tail_lines(result.stdout + result.stderr, _LOG_TAIL_LINES)
        raise BrokerError(
            f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} (exit {result.returncode}). "
            "Check the version exists on Maven Central and that Maven can reach it "
            f"(proxy or mirror in ~/.m2/settings.xml). Maven said:\n{tail}"
        )


# --------------------------------------------------------------------------
# The broker


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
        java = _require_tool("java")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir / ".launcher.lock"):
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
        if previous and _port_free(previous.port) and _port_free(previous.controller_port):
            port, controller_port = previous.port, previous.controller_port
        else:
            port, controller_port = _free_ports(2)
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
        _write_json(self.data_dir / "cluster.json", asdict(record))
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
                f"StorageTool said:\n{_tail_lines(result.stdout + result.stderr, _LOG_TAIL_LINES)}"
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
            started_at=_now_iso(),
        )
        _write_json(self.data_dir / "broker.json", asdict(self._state))
        self._finalizer = weakref.finalize(self, _signal_group, self._proc.pid, signal.SIGTERM)

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
            if _port_open(port) and _run_sync(_count_brokers(self.clients(), timeout_s=2.0)) > 0:
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
        with _file_lock(self.data_dir / ".launcher.lock"):
            self._terminate(timeout_s)

    def _terminate(self, timeout_s: float) -> None:
        assert self._state is not None
        pid = self._state.pid
        if self._proc is not None:
            _signal_group(pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(pid, signal.SIGKILL)
                self._proc.wait()
        elif _is_our_jvm(pid, self._props_path):  # attached: the pid was checked to be ours
            _signal_group(pid, signal.SIGTERM)
            if not _wait_gone(pid, self._props_path, timeout_s):
                _signal_group(pid, signal.SIGKILL)
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
            return _tail_lines(self.log_path.read_text(encoding="utf-8", errors="replace"), _LOG_TAIL_LINES)
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
        # Every topic is declared on purpose (partition counts must line up, retention
        # must be infinite); a typo or a bare producer must not create one silently.
        "auto.create.topics.enable": "false",
        "num.partitions": str(settings.partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # The log is the source of truth; datasets point into it by offset.
        "log.retention.ms": "-1",
        # Committed offsets say how far the materializer got; keep them through long pauses.
        "offsets.retention.minutes": str(10 * 365 * 24 * 60),
        # Room for a largest-allowed event wrapped with its dead-letter metadata.
        "message.max.bytes": str(max(1_048_588, 2 * settings.max_event_bytes + 65_536)),
        # One node: internal topics cannot have more replicas; few partitions start fast.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
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
    lines = ["# Written by tracestream (deploy/kafka.py) on every start; edits are overwritten."]
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


# --------------------------------------------------------------------------
# Topics


TopicSpec = Mapping[str, int] | Sequence[tuple[str, int]]


def ensure_topics(
    kafka: KafkaClients,
    topics: TopicSpec,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30,
) -> None:
    """Create the topics that do not exist yet; see ``ensure_topics_async``.

    Usable from synchronous code and from code already inside an event loop
    (it then runs on a helper thread); async code should await
    ``ensure_topics_async`` instead.
    """
    _run_sync(ensure_topics_async(kafka, topics, config, timeout_s))


async def ensure_topics_async(
    kafka: KafkaClients,
    topics: TopicSpec,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30,
) -> None:
    """Create the topics that do not exist yet and wait until each has leaders.

    Existing topics are left as they are (their partitions and config are
    the cluster owner's call). New topics get ``DEFAULT_TOPIC_CONFIG``
    (``retention.ms=-1``) overlaid with ``config``, and a replication factor
    of ``min(3, brokers)``.

    Args:
        kafka: the cluster and how to authenticate to it.
        topics: ``{name: partitions}`` or ``[(name, partitions), ...]``.
        config: topic configs for the topics created here.
        timeout_s: the whole operation's deadline.

    Raises:
        BrokerUnreachableError: the cluster did not answer within ``timeout_s``.
        KafkaAuthenticationError: the cluster refused the credentials.
        BrokerError: the cluster refused to create a topic (bad name, policy).
    """
    bootstrap = kafka.bootstrap
    wanted = dict(topics)
    topic_config = {**DEFAULT_TOPIC_CONFIG, **(config or {})}
    admin = kafka.admin(request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await kafka.start(admin)
            await _create_missing(admin, wanted, topic_config, timeout_s)
            await _await_leaders(admin, list(wanted))
    except TimeoutError as exc:
        raise BrokerUnreachableError(
            f"Kafka at {bootstrap} did not create or report the topics {sorted(wanted)} within {timeout_s:.0f} s; "
            "check the broker is up (`tracestream stack status`)."
        ) from exc
    except KafkaError as exc:
        raise BrokerUnreachableError(
            f"Kafka at {bootstrap} could not be reached to create topics {sorted(wanted)}: {exc!r}; "
            "check the broker is up (`tracestream stack status`) or TRACESTREAM_KAFKA_BOOTSTRAP."
        ) from exc
    finally:
        await admin.close()


async def _create_missing(
    admin: AIOKafkaAdminClient, wanted: dict[str, int], topic_config: dict[str, str], timeout_s: float
) -> None:
    existing = set(await admin.list_topics())
    brokers = len((await admin.describe_cluster())["brokers"])
    replication = max(1, min(3, brokers))
    new = [
        NewTopic(name, partitions, replication, topic_configs=topic_config)
        for name, partitions in wanted.items()
        if name not in existing
    ]
    if not new:
        return
    response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
    for topic, code, *message in response.topic_errors:
        error = for_code(code)
        if code == 0 or error is TopicAlreadyExistsError:  # a concurrent caller won the race
            continue
        detail = message[0] if message and message[0] else ""
        raise BrokerError(f"Kafka refused to create topic {topic!r}: {error.__name__} {detail}".rstrip())


async def _await_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Wait until every partition has a leader, so a first produce does not bounce."""
    while True:
        described = await admin.describe_topics(names)
        if all(
            t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)


async def _count_brokers(kafka: KafkaClients, timeout_s: float) -> int:
    """How many brokers a metadata request lists; 0 if the cluster does not answer yet."""
    admin = kafka.admin(request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            return len((await admin.describe_cluster())["brokers"])
    except (KafkaError, OSError, TimeoutError):
        return 0
    finally:
        await admin.close()


# --------------------------------------------------------------------------
# Small helpers


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracestream-kafka") as pool:
        return pool.submit(asyncio.run, coro).result()


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        hint = {
            "java": "Install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)",
            "mvn": "Install Apache Maven (e.g. `apt-get install maven`)",
        }[name]
        raise BrokerError(
            f"`{name}` is not on PATH; the local Kafka broker needs it. {hint}, "
            "or point TRACESTREAM_KAFKA_BOOTSTRAP at an existing cluster."
        )
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block; released if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_ports(count: int) -> tuple[int, ...]:
    """Distinct loopback ports the OS considers free right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return tuple(sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def _port_free(port: int) -> bool:
    """Whether the broker could bind ``port``; like the JVM, tolerate TIME_WAIT leftovers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    """Whether something accepts connections on the port (cheap check before a Kafka request)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_cmdline(pid: int) -> str | None:
    """The command line of ``pid``, or None if there is no such (live) process."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None  # empty: a zombie
    if sys.platform.startswith("linux"):
        return None
    result = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False)
    return result.stdout.strip() or None


def _is_our_jvm(pid: int, props_path: Path) -> bool:
    """Whether ``pid`` is the Kafka JVM started on this data folder (pids get reused)."""
    cmdline = _process_cmdline(pid)
    return cmdline is not None and "kafka.Kafka" in cmdline and str(props_path) in cmdline


def _wait_gone(pid: int, props_path: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_our_jvm(pid, props_path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the JVM's process group (it leads its own session, so group id == pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _tail_lines(text: str, count: int) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
