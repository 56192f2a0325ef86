"""The request body size limit: a larger body gets HTTP 413 before any of it is parsed.

A declared Content-Length over the limit is refused without reading the body; otherwise
(chunked uploads, or a Content-Length that lies) the body is read up to the limit, and
the app gets it replayed. Later `receive` calls (a disconnect) reach the server as usual.
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError, send_error

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _too_large(limit: int) -> ApiError:
    return ApiError(f"the request body is larger than {limit} bytes", status=413,
                    code="request_too_large")


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_bytes}")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await send_error(send, _too_large(self.max_bytes) if value.isdigit()
                                     else ApiError("the Content-Length header is invalid"))
                    return
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-upload
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, _too_large(self.max_bytes))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
