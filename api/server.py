"""Serve the API with uvicorn: alone, or as a service inside the processors' faust worker.

chDB lets one process own the warehouse folder, so in embedded mode the
process running the materializer also answers the API: uvicorn's server runs
as one more ``mode`` service of the faust worker, on the worker's event loop,
and leaves signal handling to faust (a SIGTERM stops the API after the
processors have committed, through the same graceful path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from mode import Service

from api.app import create_app
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from schemas.errors import ConfigurationError

log = logging.getLogger(__name__)


def uvicorn_config(settings: Settings, kafka: KafkaClients | None, *, loop: str = "auto") -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings, kafka=kafka), host=settings.api_host, port=settings.api_port,
        loop=loop, access_log=False, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
    )


class _GuestServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to its host."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiService(Service):
    """The API as a service of a faust worker: started after the processors, stopped before them."""

    def __init__(self, settings: Settings, kafka: KafkaClients, **kwargs) -> None:
        super().__init__(**kwargs)
        self.server = _GuestServer(uvicorn_config(settings, kafka, loop="none"))
        self.address = f"http://{settings.api_host}:{settings.api_port}"
        self._task: asyncio.Task | None = None

    async def on_start(self) -> None:
        self._task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            if self._task.done():
                raise ConfigurationError(
                    f"the API could not start on {self.address} (port taken? see the log above); "
                    "set TRACESTREAM_API_PORT to a free port"
                ) from self._task.exception()
            await asyncio.sleep(0.05)
        log.warning("API serving on %s", self.address)

    async def on_stop(self) -> None:
        if self._task is not None:
            self.server.should_exit = True
            with contextlib.suppress(BaseException):
                await self._task


def run_api_only(settings: Settings, kafka: KafkaClients | None) -> None:
    """Serve the API alone until SIGINT/SIGTERM (a ClickHouse server, or a warehouse no worker owns).

    A signal stops it gracefully (requests in flight finish) and the process exits 0, as the worker does.
    """
    config = uvicorn_config(settings, kafka)
    server = _GuestServer(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve()

    loop = (config.get_loop_factory() or asyncio.new_event_loop)()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def serving(app, host: str, port: int):
    """Serve ``app`` on a real socket from the running event loop; yields its base URL."""
    server = _GuestServer(uvicorn.Config(app, host=host, port=port, loop="none", access_log=False,
                                         log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                raise ConfigurationError(f"the API could not start on {host}:{port}") from task.exception()
            await asyncio.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
