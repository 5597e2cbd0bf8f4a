"""GET/POST/DELETE /api/session: the dashboard's sign-in, for when reads are behind the token.

A browser's EventSource cannot send an ``Authorization`` header, so the
dashboard signs in once with the token and keeps a cookie instead: HttpOnly
(no script reads it), SameSite=Strict (no other site's page sends it), Secure
over https, for ``SESSION_MAX_AGE_S``. Its value is not the token but
``read.<issued>.<expires>.<hmac>``, signed with a key derived from the token
(``api/deps.py``), so changing the token signs every browser out. The cookie
grants GET/HEAD reads only; publishing always needs the bearer header.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from api.deps import (
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    SettingsDep,
    issue_session,
    read_session,
    token_matches,
)
from api.errors import ERROR_SCHEMA, ApiError, InvalidRequest, Unauthorized
from deploy.settings import Settings

router = APIRouter(prefix="/api/session", tags=["session"])

_ERRORS = {code: {"content": {"application/json": {"schema": ERROR_SCHEMA}}} for code in (401, 409, 422)}
_TOKEN_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "required": ["token"],
                                        "properties": {"token": {"type": "string", "format": "password"}}}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["token"],
                                                         "properties": {"token": {"type": "string"}}}},
    },
}
_NO_STORE = {"Cache-Control": "no-store"}


class NoTokenConfigured(ApiError):
    status, code = 409, "no_token_configured"


class SessionStatus(BaseModel):
    """Whether the dashboard must sign in, and whether this browser has."""

    required: bool = Field(description="Reads are behind the token (TRACESTREAM_API_PROTECT_READS with a token set).")
    signed_in: bool = Field(description="The request carries a valid session cookie.")
    expires_at: datetime | None = Field(default=None, description="When the session cookie stops being accepted.")


def _status(settings: Settings, signed_in_until_s: int | None) -> SessionStatus:
    return SessionStatus(
        required=bool(settings.api_protect_reads and settings.api_token),
        signed_in=signed_in_until_s is not None,
        expires_at=datetime.fromtimestamp(signed_in_until_s, UTC) if signed_in_until_s is not None else None,
    )


def _answer(status: SessionStatus) -> Response:
    return Response(status.model_dump_json(), media_type="application/json", headers=_NO_STORE)


async def _token_in(request: Request) -> str:
    """The ``token`` field of a JSON or form body."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    body = await request.body()
    try:
        if kind == "application/x-www-form-urlencoded":
            token: Any = dict(parse_qsl(body.decode(), keep_blank_values=True)).get("token")
        elif kind == "application/json":
            data = json.loads(body)
            token = data.get("token") if isinstance(data, dict) else None
        else:
            raise InvalidRequest(f"the body is {kind}; send JSON {{\"token\": \"...\"}} or a form with token=...")
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidRequest(f"the body is not valid {kind}: send {{\"token\": \"<TRACESTREAM_API_TOKEN>\"}}") from exc
    if not isinstance(token, str) or not token:
        raise InvalidRequest("send the token as {\"token\": \"<TRACESTREAM_API_TOKEN>\"} or as a form field token",
                             [{"field": "body.token", "message": "Field required"}])
    return token


@router.get("", response_model=SessionStatus, summary="Whether sign-in is needed, and whether this browser has")
async def get_session(request: Request, settings: SettingsDep) -> Response:
    session = read_session(settings.api_token, request.cookies.get(SESSION_COOKIE), time.time()) \
        if settings.api_token else None
    return _answer(_status(settings, session.expires_at_s if session else None))


@router.post("", response_model=SessionStatus, responses=_ERRORS, openapi_extra={"requestBody": _TOKEN_BODY},
             summary="Sign in with the token: sets an HttpOnly, SameSite=Strict session cookie for reads")
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    if not settings.api_token:
        raise NoTokenConfigured("this API has no TRACESTREAM_API_TOKEN, so reads and the dashboard are open: "
                                "there is nothing to sign in to")
    if not token_matches(settings, await _token_in(request)):
        raise Unauthorized("the token is wrong; sign in with the value of TRACESTREAM_API_TOKEN "
                           "(the token the API's bearer header takes)")
    value, session = issue_session(settings.api_token, time.time())
    response = _answer(_status(settings, session.expires_at_s))
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.delete("", response_model=SessionStatus, summary="Sign out: clears the session cookie")
async def sign_out(request: Request, settings: SettingsDep) -> Response:
    response = _answer(_status(settings, None))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
