"""KafkaClients: the settings' security becomes every client's options, and the password stays secret."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.errors import ConfigurationError

SECRET = "hunter2-5b7e"


def test_plaintext_by_default():
    kafka = KafkaClients.from_settings(Settings(), "b1:9092,b2:9092")
    assert kafka.options() == {"bootstrap_servers": "b1:9092,b2:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_settings_reach_every_client_and_the_password_is_never_shown(monkeypatch):
    monkeypatch.setenv("TRACESTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("TRACESTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TRACESTREAM_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("TRACESTREAM_KAFKA_SASL_PASSWORD", SECRET)
    settings = Settings()
    kafka = KafkaClients.from_settings(settings, "b1:9092")

    assert kafka.options() == {
        "bootstrap_servers": "b1:9092", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice", "sasl_plain_password": SECRET,
    }

    async def passwords() -> list[str]:  # aiokafka clients are made inside a running loop
        consumer, producer, admin = kafka.consumer(), kafka.producer(), kafka.admin()
        seen = [c._sasl_plain_password for c in (consumer._client, producer.client, admin._client)]
        consumer._closed = True  # never started: nothing to close
        await producer.stop()
        return seen

    assert asyncio.run(passwords()) == [SECRET] * 3
    assert SECRET not in repr(kafka) and SECRET not in repr(settings) and SECRET not in kafka.describe()
    assert kafka.describe() == "SASL_PLAINTEXT, SCRAM-SHA-512, user 'alice'"
    # A child process (worker, trainer) gets the real value through its environment.
    assert settings.child_environment()["TRACESTREAM_KAFKA_SASL_PASSWORD"] == SECRET


@pytest.mark.parametrize(("options", "names"), [
    ({"security_protocol": "TLS"}, "TRACESTREAM_KAFKA_SECURITY_PROTOCOL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "TRACESTREAM_KAFKA_SASL_MECHANISM"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "TRACESTREAM_KAFKA_SASL_USERNAME"),
])
def test_incomplete_security_is_refused_naming_the_setting(options, names):
    with pytest.raises(ConfigurationError, match=names):
        KafkaClients("b1:9092", **options)


def test_ssl_builds_a_context_from_the_ca_file(tmp_path):
    settings = Settings(kafka_security_protocol="SSL", kafka_sasl_password=SecretStr(SECRET))
    kafka = KafkaClients.from_settings(settings, "b1:9093")
    options = kafka.options()
    assert options["security_protocol"] == "SSL" and options["ssl_context"] is not None
    assert "sasl_plain_password" not in options
