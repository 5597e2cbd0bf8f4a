"""What handlers depend on, in one place: settings, the warehouse reader, the publisher, the token.

Reads behind the token (``api_protect_reads``) accept either the bearer header
or the dashboard's session cookie; the cookie is issued by ``POST /api/session``
(``api/routers/session.py``), which checks the same token. The cookie never
grants more than reads: it is not looked at on the ingest door, nor on any
method other than GET/HEAD, so a cross-site form can never publish with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Unauthorized, Unavailable
from api.metrics import ApiMetrics
from api.readahead import ReadAhead
from api.reader import WarehouseReader
from deploy.kafka_clients import KafkaClients
from deploy.settings import Settings
from ingest.publisher import Publisher
from kafkalog.lag import ClusterOffsets


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
        self.pages = ReadAhead(self.reader, kept_rows=256_000 if self.settings.api_cache_entries else 0)


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


def publisher_of(state: ApiState) -> Publisher:
    if state.publisher is None:
        raise Unavailable("the ingest door has no Kafka producer; set TRACESTREAM_KAFKA_BOOTSTRAP and restart")
    return state.publisher


async def get_publisher(request: Request) -> Publisher:
    return publisher_of(request.app.state.api)


PublisherDep = Annotated[Publisher, Depends(get_publisher)]

_bearer = HTTPBearer(auto_error=False, description="The token of TRACESTREAM_API_TOKEN.")

SESSION_COOKIE = "tracestream_session"
SESSION_MAX_AGE_S = 12 * 3600
_SESSION_SCOPE = "read"
_SESSION_CLOCK_SKEW_S = 60
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Session:
    """A signed-in dashboard: what its cookie says, once its signature checked out."""

    issued_at_s: int
    """Unix seconds when ``POST /api/session`` issued it."""
    expires_at_s: int
    """Unix seconds after which it is refused (``issued_at_s + SESSION_MAX_AGE_S``)."""


def token_matches(settings: Settings, given: str) -> bool:
    """``given`` is the API token, compared in constant time."""
    # surrogatepass: a JSON body may hold a lone surrogate, which is a wrong token, not a 500.
    return settings.api_token is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), settings.api_token.encode())


def _signature(token: str, payload: str) -> str:
    # The key is derived from the token: rotating TRACESTREAM_API_TOKEN invalidates every session at once.
    key = hmac.new(token.encode(), b"tracestream dashboard session v1", hashlib.sha256).digest()
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_session(token: str, now_s: float, max_age_s: int = SESSION_MAX_AGE_S) -> tuple[str, Session]:
    """A new session and its cookie value ``read.<issued>.<expires>.<hmac>``; the token itself is not in it."""
    session = Session(int(now_s), int(now_s) + max_age_s)
    payload = f"{_SESSION_SCOPE}.{session.issued_at_s}.{session.expires_at_s}"
    return f"{payload}.{_signature(token, payload)}", session


def read_session(token: str, value: str | None, now_s: float) -> Session | None:
    """The session a cookie value carries; None when it is absent, malformed, tampered with, signed
    under another token, issued in the future, longer than ``SESSION_MAX_AGE_S`` or expired."""
    if not value or len(value) > 128:
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != _SESSION_SCOPE:
        return None
    scope, issued, expires, signature = parts
    if not all(part.isascii() and part.isdigit() for part in (issued, expires)):
        return None
    if not hmac.compare_digest(signature.encode(), _signature(token, f"{scope}.{issued}.{expires}").encode()):
        return None
    session = Session(int(issued), int(expires))
    if not 0 < session.expires_at_s - session.issued_at_s <= SESSION_MAX_AGE_S:
        return None
    if not session.issued_at_s - _SESSION_CLOCK_SKEW_S <= now_s < session.expires_at_s:
        return None
    return session


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None, what: str, hint: str = "") -> None:
    if not settings.api_token:
        return
    if credentials is None:
        raise Unauthorized(f"{what} needs a bearer token: send 'Authorization: Bearer <TRACESTREAM_API_TOKEN>'{hint}")
    if not token_matches(settings, credentials.credentials):
        raise Unauthorized(f"the bearer token is wrong; {what} needs the token of TRACESTREAM_API_TOKEN")


async def require_ingest_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Publishing needs the token whenever one is set; the session cookie does not count here."""
    _check(request.app.state.api.settings, credentials, "publishing")


async def require_read_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Reads are open unless ``api_protect_reads`` puts them behind the same token.

    A bearer header, when sent, decides alone; without one a valid session cookie
    lets GET/HEAD through (EventSource, which cannot send headers, included).
    """
    settings = request.app.state.api.settings
    if not (settings.api_protect_reads and settings.api_token):
        return
    if credentials is None and request.method in _SAFE_METHODS:
        cookie = request.cookies.get(SESSION_COOKIE)
        if read_session(settings.api_token, cookie, time.time()) is not None:
            return
        if cookie is not None:
            raise Unauthorized("the dashboard session has expired or is no longer valid (was the token changed?); "
                               "sign in again at /dashboard, or send 'Authorization: Bearer <TRACESTREAM_API_TOKEN>'")
    _check(settings, credentials, "reading", hint=", or sign in at /dashboard (POST /api/session) for a session cookie")


# Dependencies are coroutines: FastAPI would run plain functions on a thread pool, per request.
Readable = Depends(require_read_token)
Ingestible = Depends(require_ingest_token)


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response of JSON bytes serialized already (no re-encoding on the hot path)."""
    return Response(body, status_code=status, media_type="application/json", headers=headers)
