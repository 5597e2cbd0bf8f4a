"""Prometheus metrics of one app: requests by route and status, latency, traces accepted.

Each app has its own registry, so several apps in one process (tests) never
collide; ``/metrics`` serves it in the text exposition format.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tracestream_api_requests", "HTTP requests answered, by route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tracestream_api_request_seconds", "Time to answer, by route template.",
                                 ["method", "route"], buckets=_BUCKETS, registry=self.registry)
        self.accepted = Counter("tracestream_api_traces_accepted", "Traces the ingest door published and Kafka acknowledged.",
                                registry=self.registry)
        self.refused = Counter("tracestream_api_traces_refused", "Traces the ingest door refused, by HTTP status.",
                               ["status"], registry=self.registry)
        self.cache_hits = Gauge("tracestream_api_cache_hits", "Reads answered from the API's cache.",
                                registry=self.registry)
        self.cache_misses = Gauge("tracestream_api_cache_misses", "Reads that went to the warehouse.",
                                  registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (no per-request task, unlike BaseHTTPMiddleware): counts and times each request."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
