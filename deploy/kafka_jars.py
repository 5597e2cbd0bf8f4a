"""The broker's jars, fetched through Maven from Maven Central once per Kafka version."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploy.host import LOG_TAIL_LINES, file_lock, now_iso, tail_lines
from deploy.kafka_errors import BrokerError
from deploy.settings import Settings

# Kafka's runtime dependencies ship slf4j 1.7 without a binding, which would
# send every broker log line to a no-op logger; this binding routes them to
# log4j2 so start-up failures show up in broker.log.
_SLF4J_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.4")
# Pinned so every machine resolves the same way, whatever its Maven's default.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_MAVEN_TIMEOUT_S = 900.0
_COMPLETE_MARKER = ".complete"


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
    require_tool("java")
    require_tool("mvn")
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / ".fetch.lock"):
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
        marker = {"version": version, "jars": len(list(out.glob("*.jar"))), "fetched_at": now_iso()}
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
        require_tool("mvn"),
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
        tail = tail_lines(result.stdout + result.stderr, LOG_TAIL_LINES)
        raise BrokerError(
            f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} (exit {result.returncode}). "
            "Check the version exists on Maven Central and that Maven can reach it "
            f"(proxy or mirror in ~/.m2/settings.xml). Maven said:\n{tail}"
        )


def require_tool(name: str) -> str:
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
