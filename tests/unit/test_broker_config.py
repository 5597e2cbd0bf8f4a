"""The broker configuration is written once: the launcher's server.properties and compose.yaml both follow it."""

from pathlib import Path

import yaml

from deploy.broker_config import (
    COMPOSE_PATH,
    broker_config,
    main,
    properties,
    render_compose,
)
from deploy.kafka_broker import _ClusterRecord, _server_properties
from deploy.settings import Settings


def test_the_committed_compose_file_is_generated_from_the_broker_config():
    text = COMPOSE_PATH.read_text(encoding="utf-8")
    assert render_compose(text) == text, "regenerate it with `.venv/bin/python -m deploy.broker_config`"
    assert main(["--check"]) == 0
    environment = yaml.safe_load(text)["services"]["kafka"]["environment"]
    defaults = Settings.model_fields
    for key, value, _ in broker_config(defaults["partitions"].default, defaults["max_event_bytes"].default):
        assert environment[f"KAFKA_{key.upper().replace('.', '_')}"] == value


def test_the_launcher_writes_every_property_of_the_config_for_its_settings(tmp_path: Path):
    settings = Settings(home=tmp_path, partitions=7, max_event_bytes=2_000_000)
    record = _ClusterRecord(cluster_id="c", port=9092, controller_port=9093, formatted_with="4.3.1")
    written = dict(line.split("=", 1) for line in _server_properties(settings, tmp_path / "kraft", record).splitlines()
                   if line and not line.startswith("#"))
    assert properties(settings).items() <= written.items()
    assert written["num.partitions"] == "7" and written["message.max.bytes"] == str(2 * 2_000_000 + 65_536)


def test_a_compose_file_that_drifted_is_reported(tmp_path: Path):
    text = COMPOSE_PATH.read_text(encoding="utf-8")
    drifted = text.replace('KAFKA_LOG_RETENTION_MS: "-1"', 'KAFKA_LOG_RETENTION_MS: "604800000"')
    assert drifted != text and render_compose(drifted) == text
