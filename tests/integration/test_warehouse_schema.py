"""The warehouse's tables across versions: migrated at start-up, and a table that does not fit stops the writer.

Real chDB and the real broker. A user's warehouse made by an older version
must take the new version's events once it starts; a table that cannot take
them (a column of another type, or changed under a running worker) must stop
the materializer with the table, the difference and the batch's offsets, and
must not turn every event into a `warehouse_rejected` dead letter.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from deploy.settings import Settings
from ingest.producer import TraceProducer
from kafkalog.log import read_to_end
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.coordinates import Coordinates
from streams.materialize import BatchWriter, InboundEvent, trace_rows
from streams.topics import ensure_pipeline_topics
from tests.integration.support import REPO, cli, kafka_of, running_processors
from warehouse.client import Warehouse
from warehouse.errors import WarehouseSchemaMismatch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# The `traces` table as Trace v1 made it (no `model`: Trace v2 added it), written as a user's old warehouse holds it.
V1_TRACES_DDL = """
CREATE TABLE `{db}`.`traces` (
    `trace_id` String, `trace_version` Int32, `schema_version` UInt16, `prompt` String,
    `step_index` Array(Int32), `step_type` Array(LowCardinality(String)), `step_content` Array(String),
    `final_answer` String, `meta` Map(String, String), `source` LowCardinality(String),
    `created_at` DateTime64(3, 'UTC'), `score` Nullable(Float64),
    `topic` LowCardinality(String), `partition` UInt32, `offset` UInt64, `ingested_at` DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (`topic`, `partition`, `offset`)
"""

V1_ROW = ("INSERT INTO `{db}`.`traces` VALUES ('old-1', 1, 1, 'What is 2+2?', [0, 1], ['thought', 'thought'], "
          "['2 and 2', 'make 4'], '4', {{'team': 'a'}}, 'legacy', '2026-01-02 03:04:05.678', 0.5, "
          "'v1.traces.valid', 0, 7, '2026-01-02 03:04:06.000')")


def trace(trace_id: str, model: str | None = None) -> dict:
    record = {
        "trace_id": trace_id, "trace_version": 1, "prompt": f"prompt of {trace_id}",
        "steps": [{"i": 0, "type": "thought", "content": "think"}, {"i": 1, "type": "thought", "content": "done"}],
        "final_answer": "42", "meta": {"k": "v"}, "source": "evolution",
        "created_at": datetime(2026, 3, 1, tzinfo=UTC), "score": None,
    }
    return record if model is None else {**record, "model": model}


async def publish_traces(settings: Settings, v2: list[dict], v1: list[dict] = ()) -> None:
    await ensure_pipeline_topics(settings, kafka_of(settings))
    async with TraceProducer(settings, kafka_of(settings)) as producer:
        for record in v2:
            await producer.publish(record)
        for record in v1:
            await producer.publish(record, schema_version=1)


@pytest.mark.asyncio
async def test_a_warehouse_made_by_v1_takes_v2_traces_after_the_upgrade(settings: Settings):
    setup = Warehouse.connect(settings)  # this process's chDB client; the database is then made over as v1 had it
    db = setup.database
    setup.command(f"DROP DATABASE `{db}`")
    setup.command(f"CREATE DATABASE `{db}`")
    setup.command(V1_TRACES_DDL.format(db=db))
    setup.command(V1_ROW.format(db=db))

    v2 = [trace(f"new-{n}", model=f"model-{n}") for n in range(5)]
    await publish_traces(settings, v2, v1=[trace("new-v1")])
    async with running_processors(settings) as processors:  # the upgrade: start-up migrates the tables
        await wait_until_caught_up(settings, kafka_of(settings))
        rows = await processors.writer.run(lambda w: w.query(
            f"SELECT trace_id, schema_version, model, prompt, step_content, meta, score, topic, offset "
            f"FROM `{w.database}`.traces FINAL ORDER BY trace_id"))
        dead = await processors.writer.run(lambda w: w.query(f"SELECT count() FROM `{w.database}`.dlq FINAL"))

    assert dead == [(0,)]
    by_id = {row[0]: row for row in rows}
    assert sorted(by_id) == ["new-0", "new-1", "new-2", "new-3", "new-4", "new-v1", "old-1"]
    assert [by_id[f"new-{n}"][1:3] for n in range(5)] == [(2, f"model-{n}") for n in range(5)]
    assert by_id["new-v1"][1:3] == (1, None)  # a v1 event after the upgrade: no model, as before
    assert by_id["old-1"][1:] == (1, None, "What is 2+2?", ["2 and 2", "make 4"], {"team": "a"}, 0.5,
                                  "v1.traces.valid", 7)  # the old row reads back whole, its new column null


def _run_python(settings: Settings, code: str) -> None:
    """``code`` in a process of its own: chDB lets this test process own only the session's warehouse folder."""
    done = subprocess.run([sys.executable, "-c", code], env=settings.child_environment(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.asyncio
async def test_a_table_of_another_shape_stops_the_worker_naming_it_and_dead_letters_nothing(
        settings: Settings, tmp_path):
    own = settings.model_copy(update={"home": tmp_path / "home"})
    # A hand-made `traces` whose meta is JSON text: adding columns cannot fix it, so every insert would fail.
    ddl = V1_TRACES_DDL.replace("`meta` Map(String, String)", "`meta` String")
    _run_python(own, "from deploy.settings import Settings; from warehouse.client import Warehouse\n"
                     "w = Warehouse.connect(Settings()); w.command('DROP TABLE `%s`.traces'); w.command(%r)"
                % (own.clickhouse_database, ddl.format(db=own.clickhouse_database)))
    await publish_traces(own, [trace(f"t-{n}", model="m") for n in range(20)])

    done = cli(own, "worker", "--until-caught-up", "--no-web")
    output = " ".join((done.stdout + done.stderr).split())  # as one line: the console wraps at 80 columns

    assert done.returncode == 1, output
    assert "`traces`.`meta` is String, this version writes Map(String, String)" in output, output
    assert f"{own.topics.valid}[" in output and "was not written and its offsets are not committed" in output, output
    assert await read_to_end(kafka_of(own), own.topics.dlq) == []  # not one event dead-lettered


@pytest.mark.asyncio
async def test_a_column_dropped_under_a_running_writer_stops_it_with_the_batch_offsets(settings: Settings):
    codec = AvroCodec(default_registry())
    writer = BatchWriter(lambda: Warehouse.connect(settings), codec, retry_max_seconds=1)
    try:
        await writer.run(lambda w: w.command(f"ALTER TABLE `{w.database}`.traces DROP COLUMN model"))
        events = [InboundEvent(Coordinates("t.valid", partition, offset), b"k", codec.encode(trace(f"x{offset}", "m"), "Trace"))
                  for partition, offset in ((0, 3), (0, 4), (2, 9))]
        with pytest.raises(WarehouseSchemaMismatch) as raised:
            await writer.write(trace_rows(events, codec, datetime.now(UTC)))
        message = str(raised.value)
        assert "has no column `model` (Nullable(String))" in message
        assert "t.valid[0]@3..4, t.valid[2]@9..9 was not written" in message
        assert writer.rows_written == 0
    finally:
        writer.close()
