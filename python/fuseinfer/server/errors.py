"""The one error type of the HTTP layer: an OpenAI-style error body with its HTTP status,
and a way to send one from plain ASGI middleware (which runs before FastAPI's handlers)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ApiError(Exception):
    """`param` names the request field at fault (OpenAI clients show it); `kind` is the
    body's `type`: invalid_request_error (400), server_busy (503), timeout (504), ...;
    `code` is OpenAI's machine-readable reason where one applies (invalid_api_key)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


async def send_error(send: Send, err: ApiError,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """The whole error response over raw ASGI."""
    payload = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})
