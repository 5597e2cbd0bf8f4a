"""The topics tracestream owns, declared with the configuration their contracts need."""

from __future__ import annotations

from collections import Counter

from deploy.kafka_admin import ensure_topics_async
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from kafkalog.lag import topic_partitions
from schemas.errors import ConfigurationError
from streams.stage import MAX_MESSAGE_BYTES

# Datasets point into these topics by offset, so the log keeps everything, and a
# dead letter must fit the oversized event it carries.
TOPIC_CONFIG = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "max.message.bytes": str(MAX_MESSAGE_BYTES + 64 * 1024),
}


async def ensure_pipeline_topics(settings: Settings, kafka: KafkaClients) -> None:
    """Create traces.raw, traces.valid, traces.dlq, datasets.events, runs.events and models.events if missing (idempotent).

    datasets.events has one partition: checking that a name+version is new
    reads one ordered history.

    Raises:
        ConfigurationError: existing topics have different partition counts;
            validate writes raw partition p to partition p of its outputs.
    """
    topics = settings.topics
    names = (topics.raw, topics.valid, topics.dlq)
    await ensure_topics_async(
        kafka, {**{name: settings.partitions for name in names}, topics.datasets: 1, topics.runs: settings.partitions,
         topics.models: settings.partitions},
        config=TOPIC_CONFIG,
    )
    counts = Counter(tp.topic for tp in await topic_partitions(kafka, names))
    if len(set(counts.values())) > 1:
        raise ConfigurationError(
            f"{', '.join(f'{name} has {counts[name]} partitions' for name in names)}; validate keeps each "
            "trace in the partition it arrived in, so these topics need the same partition count. "
            "Add partitions to the smaller ones (kafka-topics --alter --partitions N)."
        )
