"""The ingest door's producer: a request's events are acknowledged by Kafka before the API says 202.

One ``TraceProducer`` serves every request, and concurrent requests share its
record batches: a request publishes its events and awaits their own delivery
futures, with no lock and no flush. A batch goes out when full or after
``LINGER_MS``, so a lone request waits at most that long before its batch is
sent, and under load one produce request carries many requests' events. A
request learns the fate of its own events only: an event the broker refused
fails its request, not the others in the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from ingest.producer import DeliveryFailure, DeliveryReport, TraceProducer
from schemas.errors import TracestreamError

LINGER_MS = 0
"""How long a batch waits for other requests' events before it may go out: not at all. Batches of one broker
still go out one round trip at a time (``TraceProducer`` holds a lingered batch while the broker's last one is
unacknowledged), so under load each produce request carries every event since the last, and a lone request is
sent at once. Measured 2026-11-30/12-01 on the shared 2-core dev machine with ``bench.api_load`` (16 concurrent
single-trace clients against GET /healthz in the same run, 20,000 traces, quiet machine): before the per-broker
hold, 2 ms gave 0.53-0.54x healthz at 4.7-5.8 events per produce request; with it, 0 ms 0.54-0.63x and 2 ms
0.49-0.59x at 7.4 events per request, broker round trip p50 1.05 -> 0.55 ms. Two producers (two requests in
flight) measured worse (0.42-0.51x): more, smaller produce requests cost the broker more CPU on the same cores."""


class Publisher:
    """Publishes encoded traces to ``traces.raw`` and waits for the broker's acknowledgement of each."""

    def __init__(self, settings: Settings, kafka: KafkaClients) -> None:
        self.producer = TraceProducer(settings, kafka, client_id=f"{settings.app_id}-api", linger_ms=LINGER_MS,
                                      max_in_flight=20_000, keep_failures=False)
        self.accepted = 0

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, events: Sequence[tuple[bytes, bytes]]) -> DeliveryReport:
        """Publish ``(key, payload)`` pairs in order; the report says which of these were acknowledged.

        Returns once every one of them is settled: acknowledged, or failed
        (at the latest after the producer's delivery timeout).
        """
        deliveries: list[asyncio.Future] = []
        stopped: BaseException | None = None
        try:
            for key, payload in events:
                deliveries.append(await self.producer.publish_bytes(payload, key))
        except (KafkaError, TracestreamError) as exc:
            # No client takes events (no broker, past the delivery timeout): the rest were not
            # enqueued, and count as not acknowledged, so the answer is a 503.
            stopped = exc
        errors = []
        for (key, _), delivery in zip(events, deliveries, strict=False):
            try:
                await delivery
            except (KafkaError, TracestreamError) as exc:
                errors.append(DeliveryFailure(key, exc))
        if stopped is not None:
            errors += [DeliveryFailure(key, stopped) for key, _ in events[len(deliveries):]]
        delivered = len(events) - len(errors)
        self.accepted += delivered
        return DeliveryReport(delivered=delivered, failed=len(errors), errors=tuple(errors))
