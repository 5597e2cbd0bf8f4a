"""Shared fixtures: one real Kafka broker per test session, fresh names per test.

Tests isolate themselves with random topic prefixes, consumer groups and
ClickHouse databases instead of tearing down; the broker is started from the
jars fetched through Maven unless TRACESTREAM_KAFKA_BOOTSTRAP names a cluster.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one TRACESTREAM_HOME of this test process (chDB allows one folder per process)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from deploy.kafka_broker import LocalKafkaBroker

    settings = Settings()
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    broker = LocalKafkaBroker(settings, data_dir=tmp_path_factory.mktemp("kafka"))
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings(kafka_bootstrap: str, session_home: Path) -> Settings:
    """Settings for one test: its own topics, consumer group, database and web port."""
    run = uuid.uuid4().hex[:10]
    return Settings(
        home=session_home,
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{run}.",
        app_id=f"test-{run}",
        clickhouse_database=f"test_{run}",
        partitions=3,
        web_port=free_port(),
        materialize_batch_seconds=0.1,
    )


@pytest.fixture
def kafka(settings: Settings) -> KafkaClients:
    """Clients for the session's broker, with the test settings' security (PLAINTEXT unless configured)."""
    return KafkaClients.from_settings(settings, settings.kafka_bootstrap)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One Ray instance for the whole test session (starting one costs seconds); RAY_ADDRESS joins a cluster."""
    import ray

    from trainer.distributed import connect

    connect(Settings())
    try:
        yield
    finally:
        ray.shutdown()
