"""The topics tracestream owns, declared with the configuration their contracts need."""

from __future__ import annotations

from deploy.kafka import ensure_topics_async
from deploy.settings import Settings
from streams.app import MAX_MESSAGE_BYTES

# Datasets point into these topics by offset, so the log keeps everything, and a
# dead letter must fit the oversized event it carries.
TOPIC_CONFIG = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "max.message.bytes": str(MAX_MESSAGE_BYTES + 64 * 1024),
}


async def ensure_pipeline_topics(settings: Settings, bootstrap: str) -> None:
    """Create traces.raw, traces.valid and traces.dlq if missing (idempotent)."""
    topics = settings.topics
    await ensure_topics_async(
        bootstrap,
        {name: settings.partitions for name in (topics.raw, topics.valid, topics.dlq)},
        config=TOPIC_CONFIG,
    )
