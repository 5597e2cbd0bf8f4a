"""The API's one error shape, and the errors handlers raise.

Every 4xx/5xx answer, FastAPI's own validation errors and unknown paths
included, has the body::

    {"error": {"code": "not_found", "message": "...", "details": [...]}}

``code`` is stable for programs, ``message`` says what to fix, ``details``
lists field-level problems (``{"field": "query.limit", "message": "..."}``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import TracestreamError
from warehouse.errors import WarehouseError, WarehouseUnavailable

log = logging.getLogger(__name__)


class ApiError(TracestreamError):
    """An answer other than success; ``status`` and ``code`` say which."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers


class NotFound(ApiError):
    status, code = 404, "not_found"


class InvalidRequest(ApiError):
    status, code = 422, "invalid_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unavailable(ApiError):
    """A dependency (Kafka, the warehouse) cannot serve now; the same request may work later."""

    status, code = 503, "unavailable"
    retriable = True


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "example": "not_found"},
                "message": {"type": "string", "example": "no trace with trace_id 'abc'"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": {"code": code, "message": message, "details": details or []}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _field(loc: tuple | list) -> str:
    return ".".join(str(part) for part in loc)


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI/pydantic errors as ``{"field": "body.3.steps.0.i", "message": ...}``."""
    return [{"field": _field(err.get("loc", ())), "message": err.get("msg", "invalid")} for err in errors]


def _described(err: dict[str, Any]) -> str:
    """``item 7: steps: Field required`` for a batch item, ``query.limit: ...`` otherwise."""
    loc = list(err.get("loc", ()))
    if len(loc) >= 2 and loc[0] == "body" and isinstance(loc[1], int):
        return f"item {loc[1]}: {_field(loc[2:]) or '(the item)'}: {err.get('msg', 'invalid')}"
    return f"{_field(loc)}: {err.get('msg', 'invalid')}"


def api_error_answer(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


def invalid_answer(exc: RequestValidationError, method: str) -> Response:
    errors = list(exc.errors())
    details = validation_details(errors)
    shown = "; ".join(_described(err) for err in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    refused = "; nothing was published" if method == "POST" else ""
    return error_response(422, "invalid_request", f"the request is not valid: {shown}{more}{refused}", details)


def install_handlers(app: FastAPI) -> None:
    """Make every error, ours and the framework's, answer in the one shape (``api.fastlane`` answers with
    the same functions)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return api_error_answer(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return invalid_answer(exc, request.method)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no such path {request.url.path}; GET /docs lists the endpoints"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, _http_code(exc.status_code), message, headers=exc.headers)

    @app.exception_handler(WarehouseError)
    async def warehouse_error(request: Request, exc: WarehouseError) -> Response:
        if isinstance(exc, WarehouseUnavailable):
            return error_response(503, "warehouse_unavailable", str(exc), headers={"Retry-After": "1"})
        log.error("warehouse refused a read for %s: %s", request.url.path, exc)
        return error_response(500, "warehouse_error", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


def _http_code(status: int) -> str:
    return {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, f"http_{status}")
