"""The model registry on models.events: register a completed run, promote, archive, gate, and show lineage.

Every action reads the log first (runs.events, datasets.events, models.events)
and refuses bad input before it publishes anything; the fold rules (which
version a registration gets, who holds a stage) are
``schemas.model_registry``'s, so every reader agrees. Events are keyed by
model name: one partition orders a name's events.

Registration replays the run's dataset from its offset ranges, checks it
still hashes to the manifest's ``content_sha256`` and hashes the eval split
alone (``eval_sha256``, the same ContentHasher rule): gates compare
scorecards only between versions with the same eval split. It also records
every artifact file's sha256, so a promotion that finds a file changed names
it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataset.catalog import load_catalog
from dataset.hashing import ContentHasher
from dataset.manifest import Manifest
from dataset.reader import DatasetRead, replay
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.log import read_to_end
from schemas.codec import AvroCodec
from schemas.contracts import MODEL_EVENT
from schemas.model_registry import (
    GateOutcome,
    ModelRef,
    ModelRegistryError,
    ModelVersion,
    Registry,
    check_model_name,
    check_stage,
    compare,
)
from schemas.registry import default_registry
from trainer.runlog import run_histories

REGISTER_TRIES = 5


class TamperedArtifact(ModelRegistryError):
    """An artifact on disk no longer matches the sha256 recorded for it."""


def _codec(codec: AvroCodec | None) -> AvroCodec:
    return codec or AvroCodec(default_registry())


async def load_registry(kafka: KafkaClients, topic: str, codec: AvroCodec | None = None) -> Registry:
    """models.events from its beginning, folded (partition by partition, in offset order)."""
    codec = _codec(codec)
    registry = Registry()
    for partition, offset, event in await read_to_end(
            kafka, topic, lambda r: (r.partition, r.offset, codec.decode_latest(r.value, MODEL_EVENT)[0])):
        registry.apply(event, partition, offset)
    return registry


# --- artifacts ------------------------------------------------------------------


def artifact_files(path: Path | str) -> list[dict[str, Any]]:
    """Every file under ``path``: relative POSIX path, size and sha256, in path order."""
    root = Path(path)
    files = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        files.append({"path": file.relative_to(root).as_posix(), "size": file.stat().st_size,
                      "sha256": digest.hexdigest()})
    return files


def _dir_sha256(path: Path) -> str:
    from trainer.checkpoint import (
        sha256_dir,  # imports JAX: only where an artifact is hashed
    )

    return sha256_dir(path)


def verify_artifact(artifact: dict[str, Any]) -> None:
    """Recompute an artifact's hashes; raises TamperedArtifact naming the first file that differs."""
    root = Path(artifact["path"])
    what = f"artifact {artifact['kind']} at {root}"
    if not root.is_dir():
        raise TamperedArtifact(f"{what} is missing; the version's files are gone, nothing was published")
    recorded = {f["path"]: f for f in artifact.get("files") or ()}
    found = {f["path"]: f for f in artifact_files(root)}
    for name in sorted(set(recorded) | set(found)):
        was, now = recorded.get(name), found.get(name)
        if was is None:
            raise TamperedArtifact(f"{what}: file {root / name} was added after registration; nothing was published")
        if now is None:
            raise TamperedArtifact(f"{what}: file {root / name} is missing; nothing was published")
        if was["sha256"] != now["sha256"] or was["size"] != now["size"]:
            raise TamperedArtifact(
                f"{what}: file {root / name} changed since registration (sha256 {now['sha256'][:16]}…, "
                f"registered {was['sha256'][:16]}…); nothing was published")
    if _dir_sha256(root) != artifact["sha256"]:
        raise TamperedArtifact(f"{what} no longer hashes to its registered sha256; nothing was published")


def _run_artifacts(run_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's last checkpoint and its outputs, each checked against the sha256 the run announced."""
    announced = [("checkpoint", e["checkpoint"]) for e in events if e.get("checkpoint")][-1:]
    announced += [(o["kind"], o) for e in events for o in e.get("outputs") or ()]
    if not announced:
        raise ModelRegistryError(f"run {run_id} announced no checkpoint and no outputs; there is nothing to register")
    artifacts = []
    for kind, item in announced:
        root = Path(item["path"])
        if not root.is_dir():
            raise TamperedArtifact(f"run {run_id}'s {kind} at {root} is missing; nothing was published")
        if _dir_sha256(root) != item["sha256"]:
            raise TamperedArtifact(f"run {run_id}'s {kind} at {root} no longer hashes to the sha256 the run "
                                   "announced; nothing was published")
        artifacts.append({"kind": kind, "path": str(root), "sha256": item["sha256"], "files": artifact_files(root)})
    return artifacts


# --- datasets -------------------------------------------------------------------


async def split_hashes(kafka: KafkaClients, manifest: Manifest, codec: AvroCodec) -> tuple[str, str, int]:
    """Replay the manifest: (content_sha256 of every record, eval_sha256 of the eval split, eval count)."""
    read, evals = DatasetRead(manifest), ContentHasher(manifest.hash_format)
    async for selected in replay(read, kafka, codec):
        for split, canonical, _ in selected:
            if split == "eval":
                evals.add_canonical(canonical)
    return read.content_sha256, evals.hexdigest(), evals.count


def dataset_lineage(manifest: Manifest) -> dict[str, Any]:
    """What a model's lineage shows of its dataset: the exact offsets and the counts."""
    return {
        "name": manifest.name, "version": manifest.version, "topic": manifest.topic,
        "ranges": [{"partition": r.partition, "start": r.start, "end": r.end} for r in manifest.ranges],
        "record_count": manifest.record_count, "train_count": manifest.train_count,
        "eval_count": manifest.eval_count, "content_sha256": manifest.content_sha256,
    }


# --- publishing -----------------------------------------------------------------


class _Events:
    """An idempotent producer for ModelEvents, keyed by model name."""

    def __init__(self, settings: Settings, kafka: KafkaClients, codec: AvroCodec) -> None:
        self.settings, self.kafka, self.codec = settings, kafka, codec

    async def publish(self, event: dict[str, Any]) -> tuple[int, int]:
        """Publish and wait for the acknowledgement; returns (partition, offset)."""
        from streams.topics import ensure_pipeline_topics

        await ensure_pipeline_topics(self.settings, self.kafka)
        producer = await self.kafka.start(self.kafka.producer(acks="all", enable_idempotence=True))
        try:
            meta = await producer.send_and_wait(self.settings.topics.models, self.codec.encode(event, MODEL_EVENT),
                                                key=event["name"].encode())
        finally:
            await producer.stop()
        return meta.partition, meta.offset


def _event(of: ModelVersion | None, event_type: str, **fields: Any) -> dict[str, Any]:
    base = {"name": of.name, "version": of.version, "run_id": of.run_id} if of else {}
    return {**base, "event_type": event_type, "at": datetime.now(UTC), "dataset": None, "artifacts": [],
            "scorecard": None, "stage": None, "by": None, "reason": None, "gate": None, **fields}


async def register(settings: Settings, kafka: KafkaClients, run_id: str, name: str, *,
                   codec: AvroCodec | None = None) -> ModelVersion:
    """Register completed run ``run_id`` as the next version of ``name``; returns the accepted version.

    Raises:
        ModelRegistryError: bad name, unknown or unfinished run, run already registered under the name,
            dataset that no longer replays to its hash, artifacts missing or changed.
    """
    codec = _codec(codec)
    check_model_name(name)
    events = (await run_histories(kafka, settings.topics.runs, codec)).get(run_id)
    if not events:
        raise ModelRegistryError(f"no run {run_id!r} on {settings.topics.runs}; `tracestream runs list` shows them")
    status = events[-1]["event_type"]
    if status != "completed":
        raise ModelRegistryError(f"run {run_id} is {status}, not completed; only a completed run can be registered")
    registry = await load_registry(kafka, settings.topics.models, codec)
    taken = [v for v in registry.by_run(run_id) if v.name == name]
    if taken:
        raise ModelRegistryError(f"run {run_id} is already registered as {name}@{taken[0].version}")
    scorecard = next((e["scorecard"] for e in reversed(events) if e.get("scorecard")), None)
    first = events[0]
    entry = (await load_catalog(kafka, settings.topics.datasets, codec)).get(
        first["dataset_name"], first["dataset_version"], ready=False)
    manifest = entry.manifest
    content, eval_sha, eval_count = await split_hashes(kafka, manifest, codec)
    if content != manifest.content_sha256 or content != first["dataset_sha256"]:
        raise ModelRegistryError(
            f"dataset {manifest.name}@{manifest.version} replays to content_sha256 {content}, but its manifest says "
            f"{manifest.content_sha256} and run {run_id} trained on {first['dataset_sha256']}; not registered")
    artifacts = _run_artifacts(run_id, events)
    dataset = {"name": manifest.name, "version": manifest.version, "content_sha256": content,
               "eval_sha256": eval_sha, "eval_count": eval_count}
    publisher = _Events(settings, kafka, codec)
    for _ in range(REGISTER_TRIES):
        version = registry.models[name].next_version if name in registry.models else 1
        at = await publisher.publish(_event(None, "registered", name=name, version=version, run_id=run_id,
                                            dataset=dataset, artifacts=artifacts, scorecard=scorecard))
        registry = await load_registry(kafka, settings.topics.models, codec)
        accepted = registry.models[name].versions.get(version) if name in registry.models else None
        if accepted is not None and (accepted.partition, accepted.offset) == at:
            return accepted
    raise ModelRegistryError(f"{REGISTER_TRIES} concurrent registrations of {name} took every version this one "
                             "chose; try again")


async def promote(settings: Settings, kafka: KafkaClients, ref: ModelRef, stage: str, *, by: str | None = None,
                  reason: str | None = None, codec: AvroCodec | None = None) -> ModelVersion:
    """Put a version in ``stage`` after re-hashing every artifact file (a mismatch publishes nothing)."""
    codec = _codec(codec)
    check_stage(stage)
    version = (await load_registry(kafka, settings.topics.models, codec)).resolve(ref)
    if version.stage == "archived":
        raise ModelRegistryError(f"{version.name}@{version.version} is archived; register its run again to use it")
    for artifact in version.artifacts:
        verify_artifact(artifact)
    await _Events(settings, kafka, codec).publish(_event(version, "promoted", stage=stage, by=by, reason=reason))
    return (await load_registry(kafka, settings.topics.models, codec)).resolve(ModelRef(version.name, version.version))


async def archive(settings: Settings, kafka: KafkaClients, ref: ModelRef, *, by: str | None = None,
                  reason: str | None = None, codec: AvroCodec | None = None) -> ModelVersion:
    """Take a version out of every stage for good."""
    codec = _codec(codec)
    version = (await load_registry(kafka, settings.topics.models, codec)).resolve(ref)
    if version.stage == "archived":
        raise ModelRegistryError(f"{version.name}@{version.version} is already archived")
    await _Events(settings, kafka, codec).publish(_event(version, "archived", by=by, reason=reason))
    return (await load_registry(kafka, settings.topics.models, codec)).resolve(ModelRef(version.name, version.version))


async def gate(settings: Settings, kafka: KafkaClients, candidate: ModelRef, against: ModelRef, *,
               metric: str = "exact_match", max_drop: float = 0.02, by: str | None = None,
               codec: AvroCodec | None = None) -> tuple[ModelVersion, ModelVersion, GateOutcome]:
    """Compare ``candidate``'s scorecard with ``against``'s and publish ``gated`` with the result.

    Raises ModelRegistryError (nothing published) when they cannot be compared.
    """
    codec = _codec(codec)
    registry = await load_registry(kafka, settings.topics.models, codec)
    ours, theirs = registry.resolve(candidate), registry.resolve(against)
    if (ours.name, ours.version) == (theirs.name, theirs.version):
        raise ModelRegistryError(f"{candidate} and {against} are both {ours.name}@{ours.version}; "
                                 "gate a new version against another one")
    outcome = compare(ours, theirs, metric, max_drop)
    result = {"against_version": theirs.version, "against_ref": f"{against} ({theirs.name}@{theirs.version})",
              "metric": outcome.metric, "max_drop": outcome.max_drop, "candidate": outcome.candidate,
              "baseline": outcome.baseline, "drop": outcome.drop, "passed": outcome.passed,
              "eval_sha256": outcome.eval_sha256}
    await _Events(settings, kafka, codec).publish(_event(ours, "gated", gate=result, by=by))
    return ours, theirs, outcome


async def lineage(settings: Settings, kafka: KafkaClients, version: ModelVersion,
                  codec: AvroCodec | None = None) -> dict[str, Any]:
    """Model → run → dataset → its offset ranges → trace count, read from the log."""
    codec = _codec(codec)
    events = (await run_histories(kafka, settings.topics.runs, codec)).get(version.run_id) or []
    metrics = [e["metrics"] for e in events if e.get("metrics")]
    run = {"run_id": version.run_id, "status": events[-1]["event_type"] if events else "unknown",
           "config": events[0]["config"] if events else None, "seed": events[0]["seed"] if events else None,
           "workers": events[-1]["workers"] if events else None,
           "steps": metrics[-1]["step"] if metrics else 0, "final_loss": metrics[-1]["loss"] if metrics else None,
           "completed_at": events[-1]["at"].isoformat() if events else None}
    d = version.dataset
    manifest = (await load_catalog(kafka, settings.topics.datasets, codec)).get(d["name"], d["version"],
                                                                               ready=False).manifest
    return {"run": run, "dataset": {**dataset_lineage(manifest), "eval_sha256": d.get("eval_sha256")}}


__all__ = ["TamperedArtifact", "archive", "artifact_files", "gate", "lineage", "load_registry", "promote",
           "register", "split_hashes", "verify_artifact"]
