"""`tracestream tail` and `tracestream lag` as a user runs them, against the real broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from deploy.settings import Settings
from devtools.breakage import PAYLOAD_KINDS
from devtools.generator import generate_events
from kafkalog.groups import materialize_group, validate_group
from streams.catchup import wait_until_caught_up
from tests.integration.support import REPO, cli, kafka_of, publish, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def lines(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.asyncio
async def test_tail_prints_every_record_with_coordinates_and_undecodable_ones_as_errors(settings: Settings):
    events = list(generate_events(60, seed=21, broken_share=0.3))
    payload_reasons = {e.trace_id: e.expected_reason for e in events if e.payload is not None}
    assert payload_reasons and {k.value for k in PAYLOAD_KINDS} >= set(payload_reasons.values())
    await publish(settings, events)

    printed = lines(cli(settings, "tail", "traces.raw", "--from-beginning", "--timeout", "3"))

    assert sorted(line["key"] for line in printed) == sorted(e.trace_id for e in events)
    assert sorted((line["partition"], line["offset"]) for line in printed) == sorted(
        {(line["partition"], line["offset"]) for line in printed})
    for line in printed:
        assert line["topic"] == settings.topics.raw and line["timestamp"]
        if line["key"] in payload_reasons:
            assert line["error"]["reason"] == payload_reasons[line["key"]]
            assert f"{line['topic']}[{line['partition']}]@{line['offset']}" in line["error"]["message"]
            assert "value" not in line and line["original"]
        else:
            assert line["schema"] == "Trace" and line["schema_version"] in (1, 2)
            assert line["value"]["trace_id"] == line["key"]


@pytest.mark.asyncio
async def test_tail_with_a_group_commits_what_it_printed_and_lag_shows_the_rest(settings: Settings):
    events = list(generate_events(90, seed=22, broken_share=0.0))
    await publish(settings, events)

    printed = lines(cli(settings, "tail", "traces.raw", "--group", "readers", "--from-beginning", "--limit", "25"))
    assert len(printed) == 25

    report = json.loads(cli(settings, "lag", "--group", "readers", "--json").stdout)
    assert report == json.loads(cli(settings, "lag", "--group", "readers", "--topic", "traces.raw", "--json").stdout)
    assert {row["topic"] for row in report} == {settings.topics.raw}
    assert {row["partition"] for row in report} == set(range(settings.partitions))
    for row in report:
        mine = [line["offset"] for line in printed if line["partition"] == row["partition"]]
        assert row["committed"] == (max(mine) + 1 if mine else 0)
        assert row["lag"] == row["end"] - row["committed"]
    assert sum(row["end"] for row in report) == 90
    assert sum(row["lag"] for row in report) == 90 - 25

    # The group goes on where it stopped (--from-beginning only where it committed nothing): the other 65, none again.
    rest = lines(cli(settings, "tail", "traces.raw", "--group", "readers", "--from-beginning", "--timeout", "3"))
    assert len(rest) == 65
    assert sorted(line["key"] for line in printed + rest) == sorted(e.trace_id for e in events)


@pytest.mark.asyncio
async def test_tail_without_from_beginning_shows_only_new_records(settings: Settings):
    old = list(generate_events(20, seed=23, broken_share=0.0))
    fresh = list(generate_events(200, seed=24, broken_share=0.0))
    await publish(settings, old)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "tail", "traces.raw", "--limit", "3"],
                            env=settings.child_environment(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        sent = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and sent < len(fresh) and time.monotonic() < deadline:
            await publish(settings, fresh[sent:sent + 1])
            sent += 1
            await asyncio.sleep(0.2)
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    keys = [json.loads(line)["key"] for line in stdout.splitlines()]
    assert len(keys) == 3
    assert set(keys) <= {e.trace_id for e in fresh[:sent]}


@pytest.mark.asyncio
async def test_tail_since_an_instant_prints_only_what_came_after(settings: Settings):
    before, after = list(generate_events(15, seed=29, broken_share=0.0)), list(generate_events(10, seed=30,
                                                                                                broken_share=0.0))
    await publish(settings, before)
    await asyncio.sleep(0.1)
    since = datetime.now(timezone.utc)
    await asyncio.sleep(0.1)
    await publish(settings, after)

    printed = lines(cli(settings, "tail", "traces.raw", "--since", since.isoformat(), "--timeout", "3"))
    assert sorted(line["key"] for line in printed) == sorted(e.trace_id for e in after)

    done = cli(settings, "tail", "traces.raw", "--since", "2026-11-22 05:00")
    assert done.returncode == 2 and "'2026-11-22 05:00' is not an ISO 8601 instant with a timezone" in done.stderr


@pytest.mark.asyncio
async def test_lag_defaults_to_the_processors_groups(settings: Settings):
    events = list(generate_events(150, seed=25, broken_share=0.1))
    async with running_processors(settings):
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        # In a thread: the processors keep heartbeating in this event loop while the command runs.
        report = json.loads((await asyncio.to_thread(cli, settings, "lag", "--json")).stdout)
    groups = {(row["group"], row["topic"]) for row in report}
    assert (validate_group(settings), settings.topics.raw) in groups
    assert (materialize_group(settings), settings.topics.valid) in groups
    assert (materialize_group(settings), settings.topics.dlq) in groups
    assert all(row["lag"] == 0 for row in report), report
    assert sum(row["end"] for row in report if row["topic"] == settings.topics.raw) == 150


@pytest.mark.asyncio
async def test_unknown_topics_and_groups_are_named_with_a_non_zero_exit(settings: Settings):
    done = cli(settings, "tail", "traces.nope", "--timeout", "1")
    assert done.returncode == 2
    assert "topic traces.nope does not exist" in done.stderr

    done = cli(settings, "lag", "--group", "nobody-reads-this")
    assert done.returncode == 2
    assert "consumer group 'nobody-reads-this' is not known" in done.stderr

    await publish(settings, generate_events(3, seed=26, broken_share=0.0))
    assert cli(settings, "tail", "traces.raw", "--group", "known", "--from-beginning", "--limit", "1").returncode == 0
    done = cli(settings, "lag", "--group", "known", "--topic", "traces.nope")
    assert done.returncode == 2
    assert "topic traces.nope does not exist" in done.stderr

    done = cli(settings, "lag", "--topic", "traces.raw")
    assert done.returncode == 2 and "--topic needs --group" in done.stderr
