"""What validate lets through always materializes: both dataset read paths agree (issue 9, point 7).

A trace_version of ±2^40 is a valid Avro int to fastavro but not to the
warehouse's Int32 column. It must be dead-lettered by validate, not reach
traces.valid and then be refused by the warehouse as warehouse_rejected.
"""

from __future__ import annotations

import dataclasses
import io

import pytest

from dataset.export import export_dataset
from dataset.snapshot import DatasetRequest, create_dataset
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.support import kafka_of, publish, running_processors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]

CODEC = AvroCodec(default_registry())


async def test_an_out_of_range_trace_version_is_dead_lettered_by_validate(settings: Settings):
    events = list(generate_events(120, seed=71, broken_share=0.0))
    for n, version in ((10, 2**40), (70, -(2**40))):
        events[n] = dataclasses.replace(events[n], record={**events[n].record, "trace_version": version},
                                        expected_reason="trace_version_out_of_range")
    wide = {events[10].trace_id, events[70].trace_id}

    async with running_processors(settings) as processors:
        await publish(settings, events)
        await wait_until_caught_up(settings, kafka_of(settings))
        manifest = await create_dataset(settings, kafka_of(settings), DatasetRequest("int32"), CODEC)
        dead = await processors.writer.run(lambda w: w.query(
            f"SELECT trace_id, reason, stage FROM `{w.database}`.dlq FINAL ORDER BY trace_id"))
        in_warehouse = (await processors.writer.run(lambda w: w.query(
            f"SELECT count() FROM `{w.database}`.traces FINAL")))[0][0]
        exported = {}
        for source in ("kafka", "warehouse"):
            sink = io.BytesIO()
            summary = await export_dataset(manifest, "trace", "all", sink, source=source,
                                           kafka=kafka_of(settings), codec=CODEC,
                                           warehouse=processors.writer.run)
            exported[source] = (summary.content_sha256, sink.getvalue())

    assert sorted(dead) == sorted((t, "trace_version_out_of_range", "validate") for t in wide)
    assert manifest.record_count == in_warehouse == len(events) - 2
    assert exported["kafka"] == exported["warehouse"]
    assert exported["kafka"][0] == manifest.content_sha256
