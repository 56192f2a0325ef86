"""OpenAI-compatible HTTP front end (FastAPI) over the engine process.

Endpoints (routes.py): GET /health, GET /v1/models, POST /v1/completions, POST
/v1/chat/completions (streaming as server-sent events or not), POST /generate (token ids
in and out), GET /metrics, POST /freeze_gc. Bad requests get HTTP 400 with an OpenAI-style
error body naming the field (`param`). A client that goes away aborts its request, which
frees its KV.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..runtime.tokenizer import TextTokenizer
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


def create_app(client: EngineClient, model_name: str,
               tokenizer: TextTokenizer | None) -> FastAPI:
    app = FastAPI(title="fuseinfer")
    app.state.service = CompletionService(client, model_name, tokenizer)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router)
    return app
