"""`tracestream tune` on the local Ray: trials are runs sharing a tune_id, ASHA stops weak ones, cancel stops all."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from dataset.snapshot import DatasetRequest
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.browser import (
    chromium,
    console_errors,
    get_json,
    require_chromium,
    screenshot,
    serving,
    wait_until,
)
from tests.integration.support import dataset_of, kafka_of, running_processors
from trainer.tune_space import parse_space
from warehouse.client import Warehouse

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(400)]

CODEC = AvroCodec(default_registry())
BASE = {"preset": "tiny", "train": {"total_steps": 12, "warmup_steps": 0, "checkpoint_every": 6,
                                    "eval_max_new_tokens": 8}}


async def test_tune_trials_are_runs_asha_stops_the_weak_and_the_api_and_dashboard_show_it(
        settings: Settings, ray_cluster, tmp_path: Path):
    from trainer.tune import TuneRequest, run_tune, tune_histories

    async with running_processors(settings):
        await dataset_of(settings, generate_events(40, seed=5, broken_share=0.0, kind="arith"),
                         DatasetRequest("tunable", split=Split(eval_share=0.2)))
        # A learning rate of 1e-6 barely moves the loss in 12 steps; 0.01 drops it fast. The seed draws 0.01
        # first, so at ASHA's rung (step 3) a weak trial meets a recorded strong one, and is stopped.
        space = parse_space({"train.learning_rate": {"choice": [0.01, 1e-6]}}, BASE)
        request = TuneRequest("tunable", None, space, samples=4, max_concurrent=2, grace_period=3,
                              reduction_factor=2, seed=1)
        outcome = await asyncio.to_thread(run_tune, settings, kafka_of(settings), request)

        assert outcome.status == "completed"
        runs = await tune_histories(kafka_of(settings), settings.topics.runs, CODEC, request.tune_id)
        assert len(runs) == 4 and sorted(runs) == [t["run_id"] for t in outcome.trials]
        for run_id, events in runs.items():
            assert {e["tune_id"] for e in events} == {request.tune_id}, run_id
            assert events[0]["event_type"] == "queued" and events[-1]["event_type"] in ("completed", "stopped")
        stopped = [t for t in outcome.trials if t["status"] == "stopped"]
        assert stopped, outcome.trials
        for trial in stopped:
            last = runs[trial["run_id"]][-1]
            assert last["error"].startswith("early_stopped: the ASHA scheduler"), last["error"]
            assert trial["steps"] < 12 and trial["params"] == {"train.learning_rate": 1e-6}
            assert "evaluated" not in [e["event_type"] for e in runs[trial["run_id"]]]
        completed = [t for t in outcome.trials if t["status"] == "completed"]
        assert completed and all(t["steps"] == 12 and t["eval_loss"] is not None for t in completed)
        best = outcome.best
        assert best["run_id"] == min(completed, key=lambda t: t["eval_loss"])["run_id"]
        assert best["params"] == {"train.learning_rate": 0.01} and Path(best["checkpoint"]).is_dir()
        types = [e["event_type"] for e in runs[best["run_id"]]]
        assert types[:2] == ["queued", "started"] and types[-2:] == ["evaluated", "completed"], types

        # The read API folds the same trials from the warehouse.
        await wait_until_caught_up(settings, kafka_of(settings))
        app = create_app(settings, warehouse=Warehouse.connect(settings))
        with serving(app) as base:
            listed = get_json(base, "/api/tunes")
            assert [(t["tune_id"], t["trials"]) for t in listed] == [(request.tune_id, 4)]
            tune = get_json(base, f"/api/tunes/{request.tune_id}")
            assert (tune["status"], tune["best"], tune["metric"]) == ("completed", best["run_id"], "eval_loss")
            by_id = {t["run_id"]: t for t in tune["trials"]}
            for trial in outcome.trials:
                got = by_id[trial["run_id"]]
                assert (got["status"], got["steps"], got["params"], got["eval_loss"], got["checkpoint"]) == (
                    trial["status"], trial["steps"], trial["params"], trial["eval_loss"], trial["checkpoint"])
                curve = [(m["metrics"]["step"], m["metrics"]["loss"]) for m in runs[trial["run_id"]] if m["metrics"]]
                assert [(p["step"], p["loss"]) for p in got["curve"]] == curve
            by_loss = get_json(base, f"/api/tunes/{request.tune_id}?metric=loss")
            assert by_loss["best"] == min(completed, key=lambda t: t["loss"])["run_id"]
            missing = await asyncio.to_thread(httpx.get, f"{base}/api/tunes/tune-nosuch", timeout=30)
            assert missing.status_code == 404 and "no tune 'tune-nosuch'" in missing.json()["error"]["message"]
            bad = await asyncio.to_thread(httpx.get, f"{base}/api/tunes/{request.tune_id}?metric=accuracy", timeout=30)
            assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "query.metric"
            run = get_json(base, f"/api/runs/{stopped[0]['run_id']}")["run"]
            assert run["status"] == "stopped" and run["error"].startswith("early_stopped")

            # The dashboard draws every trial's curve on one chart, the best one wide, and lists the trials.
            require_chromium()
            with chromium(tmp_path / "chromium") as driver:
                await asyncio.to_thread(driver.get, f"{base}/dashboard#tune={request.tune_id}")
                lines = await asyncio.to_thread(wait_until, driver, TUNE_CHART, timeout_s=60, what="the tune chart")
                assert sorted(line["run_id"] for line in lines) == sorted(runs)
                wide = [line["run_id"] for line in lines if line["width"] == 4]
                assert wide == [best["run_id"]] and lines[-1]["run_id"] == best["run_id"]  # drawn on top
                for line in lines:
                    assert line["steps"] == [p["step"] for p in by_id[line["run_id"]]["curve"]]
                rows = await asyncio.to_thread(driver.execute_script, TRIAL_ROWS)
                assert [r["run_id"] for r in rows] == [t["run_id"] for t in outcome.trials]
                assert [r["status"] for r in rows] == [t["status"] for t in outcome.trials]
                assert [r["run_id"] for r in rows if r["best"]] == [best["run_id"]]
                assert console_errors(driver) == []
                await asyncio.to_thread(screenshot, driver, "dashboard-tune.png")


TUNE_CHART = """
const div = document.getElementById('chart-tune');
return div && div.data && div.data.length ? div.data.map(t => ({
  run_id: t.meta, width: t.line.width, steps: Array.from(t.x)})) : null;
"""
TRIAL_ROWS = """
return Array.from(document.querySelectorAll('#trials-table tbody tr')).map(tr => ({
  run_id: tr.dataset.trial, status: tr.querySelector('.status').textContent, best: tr.classList.contains('best')}));
"""

async def test_a_cancelled_tune_leaves_no_trial_running(settings: Settings, ray_cluster):
    import ray

    from tests.integration.support import cli
    from trainer.tune import TuneRequest, run_tune, tune_histories

    async with running_processors(settings):
        await dataset_of(settings, generate_events(20, seed=6, broken_share=0.0, kind="arith"), DatasetRequest("long"))
    space = parse_space({"train.learning_rate": {"loguniform": [1e-3, 1e-2]}},
                        {"preset": "tiny", "train": {"total_steps": 100_000, "checkpoint_every": 100_000}})
    request = TuneRequest("long", None, space, samples=4, max_concurrent=2, grace_period=50_000)

    def trainables() -> list[dict]:  # Ray's actor table (the session's Ray also ran other tests' trials)
        return [a for a in ray._private.state.actors().values() if "Trainable" in a["ActorClassName"]]

    before = {a["ActorID"] for a in trainables()}
    tuning = asyncio.create_task(asyncio.to_thread(run_tune, settings, kafka_of(settings), request))

    async def training():
        runs = await tune_histories(kafka_of(settings), settings.topics.runs, CODEC, request.tune_id)
        return [r for r, events in runs.items() if any(e["event_type"] == "metrics" for e in events)]

    while len(await training()) < 2:
        assert not tuning.done(), tuning.result()
        await asyncio.sleep(0.5)
    done = await asyncio.to_thread(cli, settings, "tune", "cancel", request.tune_id)
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = await asyncio.wait_for(tuning, timeout=180)

    assert outcome.status == "cancelled" and outcome.best is None
    runs = await tune_histories(kafka_of(settings), settings.topics.runs, CODEC, request.tune_id)
    assert 2 <= len(runs) < 4, sorted(runs)  # the trials that had started; the pending ones never did
    for run_id, events in runs.items():
        types = [e["event_type"] for e in events]
        assert types[-1] == "cancelled" and "completed" not in types, (run_id, types)
        asked = [e for e in events if e["event_type"] == "cancel_requested"]
        assert asked and asked[0]["error"] == f"tune {request.tune_id} cancelled", asked
    # Nothing of the tune is left on Ray: every trial actor is dead, and every CPU is free again.
    trial_actors = [a for a in trainables() if a["ActorID"] not in before]
    assert len(trial_actors) == len(runs) and {a["State"] for a in trial_actors} == {"DEAD"}, trial_actors
    assert ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]

    shown = await asyncio.to_thread(cli, settings, "tune", "show", request.tune_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {**outcome.as_dict(), "status": "cancelled"}

    again = await asyncio.to_thread(cli, settings, "tune", "cancel", request.tune_id)
    assert again.returncode == 2 and "already ended" in said(again), said(again)
    unknown = await asyncio.to_thread(cli, settings, "tune", "cancel", "tune-nosuch")
    assert unknown.returncode == 2 and "no run of tune 'tune-nosuch'" in said(unknown), said(unknown)


async def test_ctrl_c_on_the_cli_cancels_the_tune(settings: Settings, tmp_path: Path):
    """The CLI as a user runs it (its own local Ray): Ctrl-C ends every trial with `cancelled`, and it exits 3."""
    from tests.integration.support import REPO
    from trainer.runlog import run_histories

    async with running_processors(settings):
        await dataset_of(settings, generate_events(20, seed=7, broken_share=0.0, kind="arith"), DatasetRequest("cc"))
    space, config = tmp_path / "space.json", tmp_path / "run.json"
    space.write_text(json.dumps({"train.learning_rate": {"uniform": [1e-3, 1e-2]}}))
    config.write_text(json.dumps({"preset": "tiny", "train": {"total_steps": 100_000, "checkpoint_every": 100_000}}))
    tuning = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "tune", "cc", "--space", str(space), "--config", str(config),
        "--samples", "3", "--max-concurrent", "1", "--grace-period", "50000",
        env=settings.child_environment(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async def training() -> bool:
            runs = await run_histories(kafka_of(settings), settings.topics.runs, CODEC)
            return any(e["event_type"] == "metrics" for events in runs.values() for e in events)

        while not await training():
            assert tuning.returncode is None, await tuning.communicate()
            await asyncio.sleep(0.5)
        tuning.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(tuning.communicate(), timeout=180)
        stdout, stderr = out.decode(), err.decode()
    finally:
        if tuning.returncode is None:
            tuning.kill()
    assert tuning.returncode == 3, stdout + stderr
    assert ": cancelled" in " ".join(stdout.split()), stdout
    runs = await run_histories(kafka_of(settings), settings.topics.runs, CODEC)
    assert len(runs) == 1, sorted(runs)  # one at a time: the second never started
    (events,) = runs.values()
    assert events[-1]["event_type"] == "cancelled" and events[0]["tune_id"], [e["event_type"] for e in events]


def said(done) -> str:
    """What a command printed, with rich's line wrapping undone."""
    return " ".join((done.stdout + done.stderr).split())


@pytest.mark.parametrize("space, args, message", [  # every rule of the space: tests/unit/test_tune_space.py
    ({"train.nope": {"choice": [1]}}, (), "space key 'train.nope': train has no field 'nope'"),
    ({"train.learning_rate": {"uniform": [0.01, 0.001]}}, (), "uniform needs low < high, got [0.01, 0.001]"),
    ({"train.learning_rate": {"choice": [0.01]}}, ("--samples", "101"), "--samples must be between 1 and 100, got 101"),
    ({"train.learning_rate": {"choice": [0.01]}}, ("--samples", "4", "--max-concurrent", "0"),
     "--max-concurrent must be 1 or more"),
    ({"train.learning_rate": {"choice": [0.01]}}, ("--samples", "4"), "no ready dataset anything; known: none"),
])
async def test_bad_input_is_refused_before_anything_is_published(settings: Settings, tmp_path: Path, space, args,
                                                                 message):
    from deploy.kafka_admin import ensure_topics_async
    from streams.topics import ensure_pipeline_topics
    from tests.integration.support import cli

    kafka = kafka_of(settings)
    await ensure_pipeline_topics(settings, kafka)
    await ensure_topics_async(kafka, {settings.topics.runs: 1})
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    done = await asyncio.to_thread(cli, settings, "tune", "anything", "--space", str(path),
                                   *(args or ("--samples", "4")))
    assert done.returncode == 2 and message in said(done), said(done)
    assert "Traceback" not in done.stderr
    assert await tune_histories_of_all(settings) == {}  # nothing on runs.events


async def tune_histories_of_all(settings: Settings) -> dict:
    from trainer.runlog import run_histories

    return await run_histories(kafka_of(settings), settings.topics.runs, CODEC)


async def test_a_runs_table_from_before_tunes_gains_the_tune_id_column(settings: Settings):
    """A warehouse made before RunEvent v4 has no tune_id column; connecting adds it (old rows read null)."""
    warehouse = Warehouse.connect(settings)
    warehouse.command(f"ALTER TABLE `{warehouse.database}`.runs DROP COLUMN tune_id")
    Warehouse.connect(settings)
    columns = [name for (name,) in warehouse.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'runs'", {"db": warehouse.database})]
    assert columns[-1] == "tune_id"
