"""What handlers depend on, in one place: settings, the warehouse reader, the publisher, the token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Unauthorized, Unavailable
from api.metrics import ApiMetrics
from api.publisher import Publisher
from api.readahead import ReadAhead
from api.reader import WarehouseReader
from consumers.lag import ClusterOffsets
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings


@dataclass
class ApiState:
    """Everything the app holds while it runs; made by ``create_app``, filled in at start-up."""

    settings: Settings
    reader: WarehouseReader
    kafka: KafkaClients | None
    metrics: ApiMetrics
    publisher: Publisher | None = None

    def __post_init__(self) -> None:
        # Health checks and lag reuse one admin client and consumer instead of connecting per request.
        self.offsets = ClusterOffsets(self.kafka) if self.kafka is not None else None
        # ``settings.topics`` builds a settings object (it reads the environment): once, not per request.
        self.topics = self.settings.topics
        self.pages = ReadAhead(self.reader, runs=512 if self.settings.api_cache_entries else 0)


async def get_state(request: Request) -> ApiState:
    return request.app.state.api


StateDep = Annotated[ApiState, Depends(get_state)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.api.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_reader(request: Request) -> WarehouseReader:
    return request.app.state.api.reader


ReaderDep = Annotated[WarehouseReader, Depends(get_reader)]


async def get_kafka(request: Request) -> KafkaClients:
    kafka = request.app.state.api.kafka
    if kafka is None:
        raise Unavailable("no Kafka bootstrap is configured; set TRACESTREAM_KAFKA_BOOTSTRAP or start the local stack")
    return kafka


KafkaDep = Annotated[KafkaClients, Depends(get_kafka)]


async def get_publisher(request: Request) -> Publisher:
    publisher = request.app.state.api.publisher
    if publisher is None:
        raise Unavailable("the ingest door has no Kafka producer; set TRACESTREAM_KAFKA_BOOTSTRAP and restart")
    return publisher


PublisherDep = Annotated[Publisher, Depends(get_publisher)]

_bearer = HTTPBearer(auto_error=False, description="The token of TRACESTREAM_API_TOKEN.")


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
    if not settings.api_token:
        return
    if credentials is None:
        raise Unauthorized(f"{what} needs a bearer token: send 'Authorization: Bearer <TRACESTREAM_API_TOKEN>'")
    if not hmac.compare_digest(credentials.credentials.encode(), settings.api_token.encode()):
        raise Unauthorized(f"the bearer token is wrong; {what} needs the token of TRACESTREAM_API_TOKEN")


async def require_ingest_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Publishing needs the token whenever one is set."""
    _check(request.app.state.api.settings, credentials, "publishing")


async def require_read_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Reads are open unless ``api_protect_reads`` puts them behind the same token."""
    settings = request.app.state.api.settings
    if settings.api_protect_reads:
        _check(settings, credentials, "reading")


# Dependencies are coroutines: FastAPI would run plain functions on a thread pool, per request.
Readable = Depends(require_read_token)
Ingestible = Depends(require_ingest_token)


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response of JSON bytes serialized already (no re-encoding on the hot path)."""
    return Response(body, status_code=status, media_type="application/json", headers=headers)
