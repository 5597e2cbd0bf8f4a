"""The hottest requests without FastAPI's per-request parameter machinery.

``GET /api/traces`` with nothing but ``limit``/``cursor``/``order``,
``GET /api/traces/{trace_id}``, and ``POST /api/traces`` are answered here,
through the same functions as their routes (``read_page``, ``read_trace``,
``publish_one``) and so with the same bytes and the same errors: FastAPI's
dependency and parameter solving costs more CPU than a cached answer does,
and about a third of a single-trace POST. Anything else (filters, a bad value,
a trace that does not exist, reads behind the token, a POST without the token
or without a Content-Length within the body limit) goes on to the routes,
which give the documented answers and errors.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from fastapi.security.utils import get_authorization_scheme_param

from api.cursor import Order, decode_cursor
from api.deps import token_matches
from api.errors import ApiError, InvalidRequest, api_error_answer, invalid_answer
from api.routers.ingest import publish_one
from api.routers.traces import MAX_LIMIT, read_page, read_trace
from dataset.filter import TraceFilter

_LIST = SimpleNamespace(path="/api/traces")
_ONE = SimpleNamespace(path="/api/traces/{trace_id}")
_PUBLISH = SimpleNamespace(path="/api/traces")
_NOT_IDS = {"compare", "batch"}
_NO_FILTER = TraceFilter()
_HEADERS = [(b"content-type", b"application/json")]


class TraceFastLane:
    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not self.state.settings.api_protect_reads:
            path = scope["path"]
            if path == "/api/traces":
                page = _simple_page(scope["query_string"])
                if page is not None:
                    scope["route"] = _LIST
                    limit, after = page
                    body = await read_page(self.state.pages, self.state.topics.valid, after, limit, _NO_FILTER)
                    await _send(send, body)
                    return
            elif path.startswith("/api/traces/") and not scope["query_string"]:
                trace_id = path[len("/api/traces/"):]
                if trace_id and "/" not in trace_id and trace_id not in _NOT_IDS:
                    row = await read_trace(self.state.reader, trace_id)
                    if row:
                        scope["route"] = _ONE
                        await _send(send, row.rstrip(b"\n"))
                        return
        elif scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/api/traces" \
                and self._may_publish(scope["headers"]):
            scope["route"] = _PUBLISH
            body = b""
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            try:
                answer = await publish_one(self.state, body)
            except ApiError as exc:
                answer = api_error_answer(exc)
            except RequestValidationError as exc:
                answer = invalid_answer(exc, "POST")
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _may_publish(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """A Content-Length within the body limit, and the token when one is set (else: the route answers)."""
        settings = self.state.settings
        length = token = None
        for name, value in headers:
            if name == b"content-length" and length is None:
                length = value
            elif name == b"authorization" and token is None:  # the first, as Starlette reads it
                token = value
        if length is None or not (length.isdigit() and len(length) <= 18) or int(length) > settings.api_max_body_bytes:
            return False
        if not settings.api_token:
            return True
        scheme, given = get_authorization_scheme_param((token or b"").decode("latin-1"))
        return scheme.lower() == "bearer" and token_matches(settings, given)


_ORDERS = {order.value: order for order in Order}


def _simple_page(query_string: bytes) -> tuple[int, Any] | None:
    """(limit, cursor) when the query holds only a valid limit, cursor and/or order, each once; else None."""
    try:
        pairs = parse_qsl(query_string.decode("ascii"), keep_blank_values=True, strict_parsing=bool(query_string))
    except (UnicodeDecodeError, ValueError):
        return None
    given = dict(pairs)
    if len(given) != len(pairs) or not set(given) <= {"limit", "cursor", "order"}:
        return None
    limit_text = given.get("limit", "100")
    # Four characters at most before int(): thousands of digits would hit Python's int-digits limit.
    if not (len(limit_text) <= 4 and limit_text.isascii() and limit_text.isdigit()) \
            or not 1 <= int(limit_text) <= MAX_LIMIT:
        return None
    order = _ORDERS.get(given.get("order", "asc"))
    if order is None:
        return None
    try:
        return int(limit_text), decode_cursor(given.get("cursor"), order)
    except InvalidRequest:
        return None


async def _send(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [*_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
