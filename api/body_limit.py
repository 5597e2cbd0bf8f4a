"""Refuse request bodies above the limit before anyone reads them whole."""

from __future__ import annotations

from typing import Any

from api.errors import error_response


class BodyLimitMiddleware:
    """413 when Content-Length, or the bytes actually sent, exceed ``max_bytes``.

    A chunked body is read here up to the limit and handed on from memory,
    which is what the handler would have done anyway.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> Any:
        return error_response(
            413, "payload_too_large",
            f"the request body is {size} bytes; the limit is {self.max_bytes:,} "
            "(TRACESTREAM_API_MAX_BODY_BYTES); send smaller batches",
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._too_large(f"{int(length):,}")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(f"over {size:,}")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
