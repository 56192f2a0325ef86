"""The one error type of the HTTP layer: an OpenAI-style error body with its HTTP status."""

from __future__ import annotations


class ApiError(Exception):
    """`param` names the request field at fault (OpenAI clients show it); `kind` is the
    body's `type`: invalid_request_error (400), server_busy (503), timeout (504), ..."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": None}}
