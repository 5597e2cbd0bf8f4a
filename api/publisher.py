"""The ingest door's producer: a batch is acknowledged by Kafka before the API says 202.

One ``TraceProducer`` serves every request. Its delivery reports cover
everything since the last ``flush``, so a request publishes and flushes under
a lock: the report it gets is about its own events and nobody else's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.errors import TracestreamError
from streams.producer import DeliveryFailure, DeliveryReport, TraceProducer


class Publisher:
    """Publishes encoded traces to ``traces.raw`` and waits for the broker's acknowledgement."""

    def __init__(self, settings: Settings, kafka: KafkaClients) -> None:
        self.producer = TraceProducer(settings, kafka, client_id=f"{settings.app_id}-api", linger_ms=2,
                                      max_in_flight=20_000)
        self._lock = asyncio.Lock()
        self.accepted = 0

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, events: Sequence[tuple[bytes, bytes]]) -> DeliveryReport:
        """Publish ``(key, payload)`` pairs in order; the report says which were acknowledged."""
        async with self._lock:
            try:
                for key, payload in events:
                    await self.producer.publish_bytes(payload, key)
            except (KafkaError, TracestreamError) as exc:
                # No broker takes events: settle what was handed over (bounded by the delivery
                # timeout), and count the rest as not acknowledged, so the answer is a 503.
                try:
                    settled = await self.producer.flush()
                except (KafkaError, TracestreamError):
                    settled = DeliveryReport(delivered=0, failed=0)
                report = DeliveryReport(delivered=settled.delivered, failed=len(events) - settled.delivered,
                                        errors=settled.errors or (DeliveryFailure(None, exc),))
            else:
                report = await self.producer.flush()
        self.accepted += report.delivered
        return report
