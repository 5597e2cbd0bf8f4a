"""The broker configuration tracestream relies on, written once for every way the broker is run.

``LocalKafkaBroker`` writes these into its server.properties, and the
Docker stack's kafka service gets them as environment variables: the block
between the markers in deploy/compose.yaml is generated from here
(``.venv/bin/python -m deploy.broker_config`` rewrites it; a unit test fails
when the committed file differs). Listeners, ports and folders differ by
deployment and stay with each launcher.

    .venv/bin/python -m deploy.broker_config
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.settings import Settings

COMPOSE_PATH = Path(__file__).resolve().parent / "compose.yaml"
BEGIN = "      # BEGIN broker config: generated from deploy/broker_config.py; edit there and regenerate\n"
END = "      # END broker config\n"


def broker_config(partitions: int, max_event_bytes: int) -> list[tuple[str, str, str]]:
    """(property, value, why) for a single-node broker that keeps data; the same on every launcher."""
    return [
        ("auto.create.topics.enable", "false", "Every topic is declared on purpose (partitions line up, retention "
                                                "is infinite): nothing may create one silently."),
        ("num.partitions", str(partitions), ""),
        ("default.replication.factor", "1", ""),
        ("min.insync.replicas", "1", ""),
        ("log.retention.ms", "-1", "The log is the source of truth; datasets point into it by offset."),
        ("offsets.retention.minutes", str(10 * 365 * 24 * 60),
         "Committed offsets say how far the materializer got; keep them through long pauses."),
        ("message.max.bytes", str(max(1_048_588, 2 * max_event_bytes + 65_536)),
         "Room for a largest-allowed event wrapped with its dead-letter metadata."),
        ("offsets.topic.replication.factor", "1",
         "One node: internal topics cannot have more replicas; few partitions start fast."),
        ("offsets.topic.num.partitions", "4", ""),
        ("transaction.state.log.replication.factor", "1", ""),
        ("transaction.state.log.min.isr", "1", ""),
        ("transaction.state.log.num.partitions", "4", ""),
        ("share.coordinator.state.topic.replication.factor", "1", ""),
        ("share.coordinator.state.topic.min.isr", "1", ""),
        ("group.initial.rebalance.delay.ms", "0", ""),
    ]


def properties(settings: Settings) -> dict[str, str]:
    """The configuration for these settings, as server.properties keys."""
    return {key: value for key, value, _ in broker_config(settings.partitions, settings.max_event_bytes)}


def compose_environment() -> str:
    """The kafka service's environment block for the default settings (the apache/kafka image's KAFKA_* names)."""
    defaults = Settings.model_fields
    lines = []
    for key, value, why in broker_config(defaults["partitions"].default, defaults["max_event_bytes"].default):
        if why:
            lines.append(f"      # {why}\n")
        lines.append(f'      KAFKA_{key.upper().replace(".", "_")}: "{value}"\n')
    return BEGIN + "".join(lines) + END


def render_compose(text: str) -> str:
    """``text`` (compose.yaml) with its generated block replaced by the current one."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + compose_environment() + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.broker_config", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if deploy/compose.yaml is out of date")
    args = parser.parse_args(argv)
    text = COMPOSE_PATH.read_text(encoding="utf-8")
    rendered = render_compose(text)
    if args.check:
        if rendered != text:
            print(f"{COMPOSE_PATH} is out of date; regenerate it with `.venv/bin/python -m deploy.broker_config`")
            return 1
        return 0
    COMPOSE_PATH.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
