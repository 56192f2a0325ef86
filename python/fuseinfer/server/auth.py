"""`Authorization: Bearer KEY` on every endpoint but /health (which supervisors and load
balancers probe without credentials). Plain ASGI middleware: it answers 401 before any
body is read or parsed."""

from __future__ import annotations

import hmac
from typing import Any

from .errors import ApiError, send_error

OPEN_PATHS = frozenset({"/health"})


class ApiKeyMiddleware:
    def __init__(self, app: Any, api_key: str) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self.app = app
        self._expected = b"Bearer " + api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        # constant time: the comparison must not tell how much of a guess was right
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        err = ApiError("a valid API key is required: send 'Authorization: Bearer <key>'",
                       status=401, code="invalid_api_key")
        await send_error(send, err, ((b"www-authenticate", b"Bearer"),))
