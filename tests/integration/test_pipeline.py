"""The ingest pipeline end to end on a real broker and the real ClickHouse engine.

Each test runs `tracestream worker` as its own process with its own
TRACESTREAM_HOME (chDB lets one process own a warehouse folder) and reads the
outcome with `tracestream stats --json`, as a user would.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from deploy.settings import Settings
from devtools.breakage import Breakage
from devtools.generator import generate_events
from tests.integration.support import (
    cli,
    expected_outcome,
    publish,
    reasons_of,
    start_worker,
    stats_via_cli,
    stats_via_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def own_home(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"home": tmp_path / "home"})


def test_every_event_lands_once_in_traces_or_dlq_with_its_reason(own_home: Settings, tmp_path: Path):
    events = list(generate_events(800, seed=11, broken_share=0.15))
    valid, reasons = expected_outcome(events)
    assert set(reasons) >= {"no_steps", "duplicate_step_index", "not_avro", "unknown_schema", "step_too_long"}

    report = asyncio.run(publish(own_home, events))
    assert (report.delivered, report.failed) == (len(events), 0)
    done = cli(own_home, "worker", "--until-caught-up")
    assert done.returncode == 0, done.stdout + done.stderr

    stats = stats_via_cli(own_home)
    assert stats["traces"] == valid
    assert stats["distinct_trace_ids"] == valid
    assert reasons_of(stats) == reasons
    assert all(row["stage"] == "validate" for row in stats["dead_letters_by_reason"])
    assert [p for p in stats["lag"] if p["lag"]] == []


def test_both_trace_schema_versions_are_validated_and_materialized(own_home: Settings):
    events = [e for e in generate_events(300, seed=5, broken_share=0.0)]
    written = Counter(e.schema_version for e in events)
    assert written[1] > 0 and written[2] > 0

    asyncio.run(publish(own_home, events))
    assert cli(own_home, "worker", "--until-caught-up").returncode == 0

    by_version = Counter()
    for row in stats_via_cli(own_home)["traces_by_source"]:
        by_version[row["schema_version"]] += row["count"]
    assert by_version == written


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(own_home: Settings, tmp_path: Path):
    events = list(generate_events(6000, seed=3, broken_share=0.05))
    valid, reasons = expected_outcome(events)
    log = tmp_path / "worker.log"
    worker = start_worker(own_home, log=log)
    half = len(events) // 2
    asyncio.run(publish(own_home, events[:half]))

    # Keep publishing while the worker is killed, so the kill lands mid-stream.
    rest = threading.Thread(target=lambda: asyncio.run(publish(own_home, events[half:])))
    partial = wait_for(
        lambda: (s := stats_via_worker(own_home)) and s["traces"] > 0 and s,
        timeout_s=120, what="the first rows",
    )
    rest.start()
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    rest.join(timeout=120)
    assert partial["traces"] < valid, "the worker finished before it could be killed mid-stream"

    restarted = start_worker(own_home, "--until-caught-up", log=log)
    assert restarted.wait(timeout=240) == 0, log.read_text()[-3000:]
    stats = stats_via_cli(own_home)
    assert stats["traces"] == valid
    assert stats["distinct_trace_ids"] == valid
    assert reasons_of(stats) == reasons


def test_publish_cli_reports_bad_lines_by_number_and_publishes_the_rest(own_home: Settings, tmp_path: Path):
    good = '{"prompt": "What is 1 + 1?", "steps": [{"i": 0, "type": "calculate", "content": "1 + 1 = 2"}], "final_answer": "2", "meta": {}}'
    empty_steps = '{"prompt": "What is 2 + 2?", "steps": [], "final_answer": "4", "meta": {}}'
    lines = [good, '{"prompt": "unterminated', "", good, '{"steps": "not a list"}', empty_steps]
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(lines) + "\n")

    done = cli(own_home, "publish", str(path))
    assert done.returncode == 0, done.stderr
    assert "line 2" in done.stderr and "not_json" in done.stderr
    assert "line 5" in done.stderr and "invalid_shape" in done.stderr
    assert "3 published" in done.stdout

    assert cli(own_home, "worker", "--until-caught-up").returncode == 0
    stats = stats_via_cli(own_home)
    assert stats["traces"] == 2
    assert reasons_of(stats) == Counter({"no_steps": 1})


def test_one_of_every_bad_kind_is_dead_lettered_and_the_stream_goes_on(own_home: Settings):
    broken = {}
    for event in generate_events(3000, seed=13, broken_share=1.0):
        broken.setdefault(event.expected_reason, event)
    assert set(broken) == {kind.value for kind in Breakage}, "the generator lost a breakage kind"
    good = list(generate_events(len(broken) + 1, seed=14, broken_share=0.0))
    interleaved = [e for pair in zip(good, broken.values()) for e in pair] + good[len(broken):]

    asyncio.run(publish(own_home, interleaved))
    assert cli(own_home, "worker", "--until-caught-up").returncode == 0

    stats = stats_via_cli(own_home)
    assert reasons_of(stats) == Counter({reason: 1 for reason in broken})
    assert stats["traces"] == len(good)
