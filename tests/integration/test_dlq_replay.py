"""Dead-letter replay (issue 9, point 8): dead letters whose cause is fixed become traces; once per dead letter.

The cause played here is the commonest real one: a producer upgraded to a new
Trace schema version (v3, one optional field more) before the platform
deployed it. validate dead-letters its events as unknown_schema. Deploying
the schema means the worker restarts with a registry that has v3 (here: the
processors are started again with ``streams.app.default_registry`` giving one
that has it, which is what adding ``schemas/avro/trace.v3.avsc`` does).
"""

from __future__ import annotations

import json

import pytest

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from devtools.base import GeneratedEvent
from devtools.generator import generate_events
from kafkalog.log import read_to_end
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry
from streams import app as streams_app
from streams.catchup import wait_until_caught_up
from streams.dlq_replay import REPLAYED_FROM_HEADER
from tests.integration.support import cli, publish, running_processors
from tests.registries import registry_with_trace_v3 as registry_with_field

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]


def registry_with_trace_v3() -> SchemaRegistry:
    """The packaged schemas plus Trace v3 (v2 and an optional ``temperature``), compatibility-checked."""
    return registry_with_field({"name": "temperature", "type": ["null", "double"], "default": None,
                                "doc": "Sampling temperature (v3)."})


def replay(settings: Settings, *args: str) -> tuple[int, dict]:
    done = cli(settings, "dlq", "replay", "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


async def traces_with(processors, ids: list[str]) -> int:
    return (await processors.writer.run(lambda w: w.query(
        f"SELECT count() FROM `{w.database}`.traces FINAL WHERE trace_id IN {{ids:Array(String)}}", {"ids": ids})))[0][0]


async def test_dead_letters_replayed_after_the_schema_is_deployed_become_traces_once(settings: Settings, monkeypatch):
    kafka = KafkaClients.from_settings(settings, settings.kafka_bootstrap)
    v3 = AvroCodec(registry_with_trace_v3())
    newer = [
        GeneratedEvent(e.trace_id, None, v3.encode({**e.record, "temperature": 0.7}, "Trace", 3), "unknown_schema", None)
        for e in generate_events(12, seed=301, broken_share=0.0)
    ]
    no_steps = [GeneratedEvent(e.trace_id, {**e.record, "steps": []}, None, "no_steps", 2)
                for e in generate_events(3, seed=302, broken_share=0.0)]
    fine = list(generate_events(20, seed=303, broken_share=0.0))
    ids = [e.trace_id for e in newer]

    async with running_processors(settings) as processors:
        await publish(settings, [*fine, *newer, *no_steps])
        await wait_until_caught_up(settings, kafka)
        assert await traces_with(processors, ids) == 0
        reasons = dict(await processors.writer.run(lambda w: w.query(
            f"SELECT reason, count() FROM `{w.database}`.dlq FINAL GROUP BY reason")))
        assert reasons == {"unknown_schema": 12, "no_steps": 3}

    # Before the fix a dry run counts; the log is untouched.
    code, dry = replay(settings, "--reason", "unknown_schema", "--dry-run")
    assert (code, dry["replayed"], dry["dry_run"]) == (0, 12, True)

    # The schema is deployed: the worker restarts knowing Trace v3. Then the dead letters are replayed.
    monkeypatch.setattr(streams_app, "default_registry", registry_with_trace_v3)
    code, first = replay(settings, "--reason", "unknown_schema")
    assert (code, first["replayed"], first["already_replayed"]) == (0, 12, 0)
    assert first["by_reason"] == {"unknown_schema": {"replayed": 12, "already_replayed": 0}}

    async with running_processors(settings) as processors:
        await wait_until_caught_up(settings, kafka)
        assert await traces_with(processors, ids) == 12
        dead = await processors.writer.run(lambda w: w.query(
            f"SELECT topic, partition, offset FROM `{w.database}`.dlq FINAL WHERE reason = 'unknown_schema'"))
    # Every replayed raw event names its dead letter.
    replayed_from = [
        dict(r.headers).get(REPLAYED_FROM_HEADER) for r in await read_to_end(kafka, settings.topics.raw)
    ]
    assert sorted(h.decode() for h in replayed_from if h) == sorted(f"{t}/{p}/{o}" for t, p, o in dead)

    # A second replay is refused: nothing is published.
    code, second = replay(settings)  # every reason: no_steps are replayed, unknown_schema ones are not
    assert (code, second["replayed"], second["already_replayed"]) == (0, 3, 12)
    code, third = replay(settings, "--reason", "unknown_schema")
    assert (code, third["replayed"], third["already_replayed"]) == (1, 0, 12)
    # --again replays them again, on purpose.
    code, again = replay(settings, "--reason", "unknown_schema", "--again")
    assert (code, again["replayed"]) == (0, 12)
    replayed = [r for r in await read_to_end(kafka, settings.topics.raw) if REPLAYED_FROM_HEADER in dict(r.headers)]
    assert len(replayed) == 12 + 3 + 12
