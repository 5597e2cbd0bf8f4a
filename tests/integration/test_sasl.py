"""A cluster that needs SASL/SCRAM, as managed Kafka does: credentials come from the settings only.

A second local broker is started whose only client listener is SASL_PLAINTEXT
with SCRAM-SHA-512 (its inter-broker listener authenticates too). The whole
pipeline runs against it with the credentials in TRACESTREAM_KAFKA_SASL_*;
a wrong password fails at start, naming the cluster, the mechanism and the
user, and the password itself appears nowhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from deploy.kafka_broker import LocalKafkaBroker
from deploy.kafka_clients import KafkaAuthenticationError
from deploy.settings import Settings
from devtools.generator import generate_events
from ingest.producer import TraceProducer
from streams.topics import ensure_pipeline_topics
from tests.integration.support import (
    cli,
    expected_outcome,
    kafka_of,
    publish,
    reasons_of,
    stats_via_cli,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

USER, PASSWORD = "alice", "alice-s3cret-4f1d"
WRONG = "not-alices-password-9c2e"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaBroker]:
    home = tmp_path_factory.mktemp("sasl")
    broker = LocalKafkaBroker(Settings(home=home, kafka_bootstrap=None, kafka_heap_mb=512), data_dir=home / "kafka",
                              sasl_users={USER: PASSWORD})
    broker.start(timeout_s=120)
    try:
        yield broker
    finally:
        broker.stop()


def _on_broker(settings: Settings, broker: LocalKafkaBroker, home: Path, password: str) -> Settings:
    return settings.model_copy(update={
        "home": home,
        "kafka_bootstrap": broker.bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": SecretStr(password),
    })


def test_the_pipeline_runs_end_to_end_with_scram_credentials_from_the_settings(
    settings: Settings, sasl_broker: LocalKafkaBroker, tmp_path: Path
):
    sasl = _on_broker(settings, sasl_broker, tmp_path / "home", PASSWORD)
    events = list(generate_events(400, seed=23, broken_share=0.1))
    valid, reasons = expected_outcome(events)

    report = asyncio.run(publish(sasl, events))
    assert (report.delivered, report.failed) == (len(events), 0)
    done = cli(sasl, "worker", "--until-caught-up")  # a process of its own: the credentials travel in its environment
    assert done.returncode == 0, done.stdout + done.stderr

    stats = stats_via_cli(sasl)
    assert stats["traces"] == valid
    assert reasons_of(stats) == reasons
    assert [p for p in stats["lag"] if p["lag"]] == []

    created = cli(sasl, "dataset", "create", "sasl")
    assert created.returncode == 0, created.stdout + created.stderr
    listed = cli(sasl, "dataset", "list", "--json")
    assert [(d["name"], d["status"], d["record_count"]) for d in json.loads(listed.stdout)] == [("sasl", "ready", valid)]
    for run in (done, created, listed):
        assert PASSWORD not in run.stdout + run.stderr


def test_a_wrong_password_fails_at_start_naming_the_problem_never_the_password(
    settings: Settings, sasl_broker: LocalKafkaBroker, tmp_path: Path
):
    bad = _on_broker(settings, sasl_broker, tmp_path / "home", WRONG)
    kafka = kafka_of(bad)
    assert WRONG not in repr(kafka) and WRONG not in repr(bad) and WRONG not in str(kafka.describe())

    with pytest.raises(KafkaAuthenticationError) as caught:
        asyncio.run(ensure_pipeline_topics(bad, kafka))
    message = str(caught.value)
    for part in ("authentication failed", sasl_broker.bootstrap, "SCRAM-SHA-512", f"user {USER!r}"):
        assert part in message
    assert WRONG not in message

    async def start_producer() -> None:
        async with TraceProducer(bad, kafka):
            pass

    with pytest.raises(KafkaAuthenticationError, match="authentication failed"):
        asyncio.run(start_producer())

    done = cli(bad, "worker", "--until-caught-up", timeout_s=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "authentication failed" in output and f"user {USER!r}" in output
    assert "Traceback" not in output  # one clear line, not a stack
    assert WRONG not in output
