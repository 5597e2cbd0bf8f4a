"""Build the FastAPI application: the read API, the ingest door and the dashboard page.

The app owns nothing at import time: ``create_app`` takes the settings (and,
when the caller already holds one, the warehouse) and wires the routers.
"""

from __future__ import annotations

from fastapi import FastAPI

import api.dashboard
from deploy.settings import Settings
from warehouse.client import Warehouse


def create_app(settings: Settings, *, warehouse: Warehouse | None = None, bootstrap: str | None = None) -> FastAPI:
    """The API for ``settings``.

    Args:
        settings: the process's settings.
        warehouse: an open warehouse to share (``tracestream serve`` passes the
            processors'); when None the app opens its own on start-up.
        bootstrap: Kafka bootstrap servers; defaults to ``settings.kafka_bootstrap``.
    """
    app = FastAPI(title="tracestream", version="1")
    app.state.settings = settings
    app.state.warehouse = warehouse
    app.state.bootstrap = bootstrap or settings.kafka_bootstrap
    app.include_router(api.dashboard.router)
    return app
