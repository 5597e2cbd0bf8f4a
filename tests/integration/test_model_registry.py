"""The model registry end to end: train → register → promote → gate, lineage to offsets, the API and the dashboard.

Everything is real: the broker, the processors and the API in this process
(which owns the session's chDB folder), training runs on a generated
dataset, the trainer service under a policy that registers, gates and
promotes, and the `tracestream models` CLI as a user runs it. The one run
that is not trained is published through the run-event producer as any
writer of runs.events could: a copy of a real checkpoint with a scorecard
whose exact match we choose, so the gate's failure is controlled.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.server import serving
from dataset.catalog import load_catalog
from dataset.hashing import content_sha256
from dataset.ranges import OffsetRange
from dataset.select import select
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.settings import Settings
from devtools.generator import generate_events
from kafkalog.lag import end_offsets
from kafkalog.log import read_to_end
from kafkalog.ranges import read_range_batches
from schemas.codec import AvroCodec
from schemas.model_registry import ModelRef, ModelRegistryError
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.conftest import free_port
from tests.integration.support import cli, dataset_of, kafka_of, running_processors
from tests.integration.test_trainer_service import serve_until
from trainer import registry as models
from trainer.checkpoint import sha256_dir
from trainer.policy import parse_policy
from trainer.run import event_json, run_training
from trainer.service import TrainerService
from warehouse.client import Warehouse

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(420)]

CODEC = AvroCodec(default_registry())
RUN_A = {"preset": "tiny", "train": {"total_steps": 6, "checkpoint_every": 3, "eval_max_new_tokens": 8}}
RUN_B = {"preset": "tiny", "train": {"total_steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "eval_max_new_tokens": 8,
                                     "seed": 1}}


async def publish_run(settings: Settings, run_id: str, dataset: Any, checkpoint: Path, scorecard: dict,
                      last: str = "completed") -> None:
    """A run's events on runs.events, published as the trainer's producer publishes them (idempotent, acks=all)."""
    base = {"run_id": run_id, "dataset_name": dataset.name, "dataset_version": dataset.version,
            "dataset_sha256": dataset.content_sha256, "config": event_json(RUN_A), "seed": 0, "workers": 1,
            "metrics": None, "checkpoint": None, "scorecard": None, "error": None, "truncated_examples": None,
            "outputs": None}
    events = [{**base, "event_type": "queued"}, {**base, "event_type": "started"},
              {**base, "event_type": "checkpoint",
               "checkpoint": {"step": 6, "path": str(checkpoint), "sha256": sha256_dir(checkpoint)}},
              {**base, "event_type": "evaluated", "scorecard": event_json(scorecard)},
              {**base, "event_type": last}]
    producer = await kafka_of(settings).start(kafka_of(settings).producer(acks="all", enable_idempotence=True))
    try:
        for event in events:
            event["at"] = datetime.now(UTC)
            await producer.send_and_wait(settings.topics.runs, CODEC.encode(event, "RunEvent"), key=run_id.encode())
    finally:
        await producer.stop()


async def models_cli(settings: Settings, *args: str) -> tuple[int, Any, str]:
    """`tracestream models ARGS` in a process of its own: (exit code, stdout as JSON when it is, stderr unwrapped)."""
    done = await asyncio.to_thread(cli, settings, "models", *args)
    try:
        body = json.loads(done.stdout)
    except json.JSONDecodeError:
        body = done.stdout
    return done.returncode, body, "".join(done.stderr.split())  # the console wraps lines: compare without spaces


async def model_events(settings: Settings) -> list[tuple[str, int, bool | None]]:
    """(event_type, version, gate passed) of every event on models.events, in log order."""
    events = await read_to_end(kafka_of(settings), settings.topics.models,
                               lambda r: CODEC.decode_latest(r.value, "ModelEvent")[0])
    return [(e["event_type"], e["version"], e["gate"]["passed"] if e["gate"] else None) for e in events]


async def test_train_register_promote_gate_and_lineage_from_cli_api_and_log(settings: Settings, tmp_path: Path):
    kafka = kafka_of(settings)
    async with running_processors(settings) as processors:
        manifest = await dataset_of(settings, generate_events(80, seed=43, broken_share=0.0),
                                    DatasetRequest("sft", split=Split(eval_share=0.25)))
        a = await run_training(settings, kafka, "sft", None, RUN_A, run_id="run-a", workdir=tmp_path / "a")

        # Register the first run and make it production.
        v1 = await models.register(settings, kafka, "run-a", "arith")
        assert (v1.name, v1.version, v1.run_id) == ("arith", 1, "run-a")
        assert v1.dataset["content_sha256"] == manifest.content_sha256 and v1.dataset["eval_count"] == manifest.eval_count
        assert [art["kind"] for art in v1.artifacts] == ["checkpoint"]
        assert v1.artifacts[0]["path"] == str(a.checkpoint) and v1.artifacts[0]["files"]
        assert v1.scorecard == a.scorecard
        with pytest.raises(ModelRegistryError, match="run-a is already registered as arith@1"):
            await models.register(settings, kafka, "run-a", "arith")
        await models.promote(settings, kafka, ModelRef("arith", 1), "production", by="ana", reason="first model")

        # The trainer service trains the second run, registers it, gates it against production, promotes it.
        policy = parse_policy({"rules": [{"dataset": "sft", "config": RUN_B, "register_as": "arith",
                                          "gate": {"against": "production", "metric": "exact_match",
                                                   "max_drop": 0.02},
                                          "promote_to": "staging"}]})
        service = TrainerService(settings, kafka, policy)
        await serve_until(service, 2)  # sft's created event (skipped), then its ready event (a run)
        (decision,) = [d for d in service.decisions if d.run_id]
        assert decision.status == "completed", decision
        assert decision.model.startswith("arith@2, gate passed against arith@1") and \
            decision.model.endswith("promoted to staging"), decision.model

        # A third run with a scorecard we control: exact match 0.5 above the second's.
        v2 = (await models.load_registry(kafka, settings.topics.models)).resolve(ModelRef("arith", 2))
        copy = tmp_path / "c" / "checkpoints" / "6"
        shutil.copytree(a.checkpoint, copy)
        better = min(1.0, v2.scorecard["exact_match"] + 0.5)
        await publish_run(settings, "run-c", manifest, copy, {**a.scorecard, "exact_match": better})
        code, body, err = await models_cli(settings, "register", "run-c", "--name", "arith", "--json")
        assert code == 0, err
        assert (body["version"], body["run_id"], body["artifacts"][0]["path"]) == (3, "run-c", str(copy))
        code, body, err = await models_cli(settings, "promote", "arith@3", "--stage", "production",
                                           "--by", "ana", "--reason", "higher exact match", "--json")
        assert code == 0, err
        assert body["stage"] == "production" and body["history"][-1]["reason"] == "higher exact match"

        # The gate: the second version against production fails by the controlled difference (exit 1) ...
        code, body, err = await models_cli(settings, "gate", "arith@2", "--against", "arith@production", "--json")
        assert code == 1, err
        assert body["passed"] is False and body["against"] == "arith@3"
        assert (body["candidate_value"], body["baseline_value"]) == (v2.scorecard["exact_match"], better)
        assert body["drop"] == pytest.approx(better - v2.scorecard["exact_match"])
        assert body["eval_sha256"] == v1.dataset["eval_sha256"]
        # ... and passes when the drop allowed covers it (exit 0).
        code, body, err = await models_cli(settings, "gate", "arith@2", "--against", "arith@production",
                                           "--max-drop", "0.6", "--json")
        assert code == 0 and body["passed"] is True, err

        # Bad input: exit 2, a message naming what to fix, nothing published.
        before = await end_offsets(kafka, [settings.topics.models])
        tampered = sorted(p for p in copy.rglob("*") if p.is_file())[0]
        with tampered.open("ab") as f:
            f.write(b"tampered")
        refusals = [  # (malformed refs, stages and metrics: tests/unit/test_model_events.py)
            (("promote", "arith@3", "--stage", "staging"), f"file {tampered} changed since registration"),
            (("show", "nosuch"), "no model named 'nosuch'; known models: arith"),
            (("promote", "arith@9", "--stage", "staging"), "arith@9 does not exist; versions: arith@1, arith@2"),
            (("promote", "arith", "--stage", "staging"), "'arith' is ambiguous: name the version"),
        ]
        for args, says in refusals:
            code, _, err = await models_cli(settings, *args)
            assert code == 2 and "".join(says.split()) in err, (args, code, err)
        assert await end_offsets(kafka, [settings.topics.models]) == before

        # Scorecards on another eval split cannot be compared: refused before anything is published.
        other = await create_dataset(settings, kafka, DatasetRequest("sft-salted", split=Split(0.25, salt="x")), CODEC)
        await publish_run(settings, "run-d", other, a.checkpoint, a.scorecard)
        assert (await models.register(settings, kafka, "run-d", "arith")).version == 4
        before = await end_offsets(kafka, [settings.topics.models])
        code, _, err = await models_cli(settings, "gate", "arith@4", "--against", "arith@1")
        assert code == 2 and "differentevalsplits" in err, err
        assert await end_offsets(kafka, [settings.topics.models]) == before
        await models.archive(settings, kafka, ModelRef("arith", 4), reason="other eval split")

        # The tables people read: `models list` and `models show` without --json.
        code, listed, err = await models_cli(settings, "list")
        assert code == 0 and "production: v3, staging: v2" in listed, (listed, err)
        code, shown, err = await models_cli(settings, "show", "arith@2")
        assert code == 0 and "stage: staging" in shown and "gate FAILED vs arith@production" in shown, (shown, err)
        assert f"{manifest.topic}[{manifest.ranges[0].partition}] offsets [{manifest.ranges[0].start}," in shown

        # Lineage: `models show` names the exact offsets; replayed, they hash to the recorded content_sha256.
        code, shown, err = await models_cli(settings, "show", "arith@production", "--json")
        assert code == 0, err
        assert (shown["version"], shown["stages"]) == (3, {"production": 3, "staging": 2})
        lineage = shown["lineage"]
        assert lineage["run"]["run_id"] == "run-c" and lineage["run"]["status"] == "completed"
        ranges = [OffsetRange(lineage["dataset"]["topic"], r["partition"], r["start"], r["end"])
                  for r in lineage["dataset"]["ranges"]]
        assert ranges == list(manifest.ranges)
        assert lineage["dataset"]["record_count"] == manifest.record_count == 80
        entry = (await load_catalog(kafka, settings.topics.datasets, CODEC)).get("sft", lineage["dataset"]["version"])
        records = [r async for batch in read_range_batches(kafka, ranges, codec=CODEC) for r in batch]
        replayed = content_sha256(r for _, r in select(records, entry.manifest.filter, entry.manifest.split))
        assert replayed == shown["dataset"]["content_sha256"] == lineage["dataset"]["content_sha256"]

        # The log holds every event in order; the warehouse materialized each exactly once, in the same order.
        expected = [("registered", 1, None), ("promoted", 1, None), ("registered", 2, None), ("gated", 2, True),
                    ("promoted", 2, None), ("registered", 3, None), ("promoted", 3, None), ("gated", 2, False),
                    ("gated", 2, True), ("registered", 4, None), ("archived", 4, None)]
        assert await model_events(settings) == expected
        await asyncio.wait_for(wait_until_caught_up(settings, kafka), 120)
        rows = await processors.writer.run(lambda w: w.query(
            f"SELECT event_type, version, stage FROM `{w.database}`.models FINAL ORDER BY partition, offset"))
        assert [(t, v) for t, v, _ in rows] == [(t, v) for t, v, _ in expected]
        assert [s for _, _, s in rows if s] == ["production", "staging", "production"]

        # The read API folds the same table the same way.
        settings = settings.model_copy(update={"api_port": free_port()})
        app = create_app(settings, warehouse=Warehouse.connect(settings))
        async with serving(app, settings.api_host, settings.api_port) as base, \
                httpx.AsyncClient(base_url=base, timeout=30) as client:
            listed = (await client.get("/api/models")).json()
            assert [(m["name"], m["latest_version"], m["versions"], m["stages"]) for m in listed] == [
                ("arith", 4, 4, {"production": 3, "staging": 2})]
            detail = (await client.get("/api/models/arith")).json()
            by_version = {v["version"]: v for v in detail["versions_detail"]}
            assert [v["version"] for v in detail["versions_detail"]] == [4, 3, 2, 1]
            assert [(v, by_version[v]["stage"]) for v in (1, 2, 3, 4)] == [
                (1, None), (2, "staging"), (3, "production"), (4, "archived")]
            assert [(g["passed"], g["against_version"]) for g in by_version[2]["gates"]] == [
                (True, 1), (False, 3), (True, 3)]
            assert by_version[3]["lineage"]["dataset"]["ranges"] == [
                {"partition": r.partition, "start": r.start, "end": r.end} for r in manifest.ranges]
            assert by_version[3]["lineage"]["run"]["status"] == "completed"
            assert by_version[1]["history"][0]["by"] == "ana"
            missing = await client.get("/api/models/nosuch")
            assert missing.status_code == 404 and "nosuch" in missing.json()["error"]["message"]

            # The dashboard's registry panel, in headless Chromium.
            await _check_dashboard(base, tmp_path)


async def _check_dashboard(base: str, tmp_path: Path) -> None:
    from tests.integration.browser import (
        chromium,
        console_errors,
        require_chromium,
        screenshot,
        wait_until,
    )

    require_chromium()

    def look() -> dict:
        with chromium(tmp_path / "chromium") as driver:
            driver.get(base + "/dashboard")
            shown = wait_until(driver, """
                const rows = (id) => Array.from(document.querySelectorAll(`#${id} tbody tr`))
                  .map(r => Array.from(r.cells).map(c => c.innerText.trim()));
                const versions = rows('model-versions-table');
                return versions.length === 4 && {models: rows('models-table'), versions};
            """, timeout_s=30, what="the registry panel")
            screenshot(driver, "dashboard-models.png")
            shown["errors"] = console_errors(driver)
            return shown

    shown = await asyncio.to_thread(look)
    assert shown["models"] == [["arith", "v4", "production v3 · staging v2"]], shown
    versions = {row[0]: row for row in shown["versions"]}
    assert versions["arith@3"][1:3] == ["production", "run-c"] and versions["arith@2"][1] == "staging"
    assert versions["arith@4"][1] == "archived" and versions["arith@1"][1] == "–"
    assert versions["arith@2"][5].startswith("passed vs arith@production"), versions["arith@2"]
    assert versions["arith@3"][3] == "sft@1"
    assert shown["errors"] == []


async def test_only_completed_runs_register_and_concurrent_registrations_get_one_version_each(
    settings: Settings, tmp_path: Path,
):
    kafka = kafka_of(settings)
    async with running_processors(settings):
        manifest = await dataset_of(settings, generate_events(30, seed=5, broken_share=0.0),
                                    DatasetRequest("small", split=Split(eval_share=0.3)))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights").write_bytes(b"\0" * 64)
    await publish_run(settings, "run-live", manifest, checkpoint, {"exact_match": 0.0}, last="evaluated")
    code, _, err = await models_cli(settings, "register", "run-live", "--name", "m")
    assert code == 2 and "runrun-liveisevaluated,notcompleted" in err, err
    code, _, err = await models_cli(settings, "register", "run-nope", "--name", "m")
    assert code == 2 and "norun'run-nope'" in err, err
    code, _, err = await models_cli(settings, "register", "run-live", "--name", "bad name")
    assert code == 2 and "modelname'badname'isnotvalid" in err, err
    assert set((await end_offsets(kafka, [settings.topics.models])).values()) <= {0}

    # Three registrations of one name at once: the log orders them, each ends up with its own version.
    for run_id in ("run-x", "run-y", "run-z"):
        await publish_run(settings, run_id, manifest, checkpoint, {"exact_match": 0.0})
    versions = await asyncio.gather(*(models.register(settings, kafka, run_id, "m")
                                      for run_id in ("run-x", "run-y", "run-z")))
    assert sorted(v.version for v in versions) == [1, 2, 3]
    folded = (await models.load_registry(kafka, settings.topics.models)).model("m")
    assert {v.version: v.run_id for v in versions} == {n: v.run_id for n, v in folded.versions.items()}
    # A registration that lost the race is in the log but ignored by every reader; its registrant took the next.
    lost = (await models.load_registry(kafka, settings.topics.models)).ignored
    assert all("registered again; the log gave it to run" in why for _, _, why in lost), lost
