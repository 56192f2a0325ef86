"""OpenAI-compatible HTTP front end (FastAPI) over the engine process.

Endpoints (routes.py): GET /health, GET /v1/models, POST /v1/completions, POST
/v1/chat/completions (streaming as server-sent events or not), POST /generate (token ids
in and out), GET /metrics, POST /freeze_gc. Bad requests get HTTP 400 with an OpenAI-style
error body naming the field (`param`). A client that goes away aborts its request, which
frees its KV. Two ASGI layers run before any handler: the API key (when one is set; 401)
and the body size limit (413), so neither an unauthenticated nor an oversized request
costs any parsing.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..runtime.tokenizer import TextTokenizer
from .auth import ApiKeyMiddleware
from .body_limit import DEFAULT_MAX_REQUEST_BYTES, BodyLimitMiddleware
from .completion_service import CompletionService
from .engine_client import EngineClient
from .errors import ApiError
from .routes import router


async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0]
    return JSONResponse(ApiError(f"invalid request: {first.get('msg')}").body(),
                        status_code=400)


def create_app(client: EngineClient, model_name: str, tokenizer: TextTokenizer | None,
               api_key: str | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """`api_key`: when set, every endpoint but /health needs `Authorization: Bearer KEY`.
    `max_request_bytes`: larger request bodies get HTTP 413."""
    if api_key is not None and not api_key:
        raise ValueError("the API key must not be empty")
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
    app = FastAPI(title="fuseinfer")
    app.state.service = CompletionService(client, model_name, tokenizer)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router)
    # the last added runs first: the key is checked before the body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    return app
