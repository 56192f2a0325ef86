"""The HTTP endpoints. Each parses its body into its request model, checks it, and hands
the work to the app's `CompletionService`."""

from __future__ import annotations

import gc
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .chat_template import render_chat
from .completion_service import CompletionJob, CompletionService
from .errors import ApiError
from .openai_format import openai_finish_reason
from .request_models import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    GenerateSamplingFields,
    parse_body,
)

router = APIRouter()
# max_tokens when a request gives none (chat: what the context leaves, up to the cap)
COMPLETIONS_MAX_TOKENS = 16
GENERATE_MAX_TOKENS = 128
CHAT_MAX_TOKENS_CAP = 1024


async def _service(request: Request) -> CompletionService:
    return request.app.state.service


Service = Annotated[CompletionService, Depends(_service)]


@router.get("/health")
async def health(service: Service) -> JSONResponse:
    """200 while the engine process serves; 503 once it died (the server is exiting)."""
    status, body = service.client.health()
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def metrics(service: Service) -> PlainTextResponse:
    client = service.client
    return PlainTextResponse(client.metrics.render(client.stats),
                             media_type="text/plain; version=0.0.4")


@router.post("/freeze_gc")
async def freeze_gc(service: Service) -> dict:
    """Freeze the garbage collector's survivors in both processes (after warm-up)."""
    gc.collect()
    gc.freeze()
    service.client.freeze_gc()
    return {"status": "ok"}


@router.get("/v1/models")
async def models(service: Service) -> dict:
    return {"object": "list", "data": [{"id": service.model_name, "object": "model",
                                        "created": 0, "owned_by": "fuseinfer",
                                        "vocab_size": service.vocab_size,
                                        "max_model_len": service.max_context}]}


@router.post("/generate")
async def generate(request: Request, service: Service) -> JSONResponse:
    body = parse_body(GenerateRequest, await request.body())
    if body.input_ids is not None and body.text is not None:
        raise ApiError("give one of 'input_ids' and 'text', not both", "text")
    if body.input_ids is not None:
        param, ids = "input_ids", service.prompt_ids(body.input_ids, "input_ids")
    elif body.text is not None:
        param, ids = "text", service.prompt_ids(body.text, "text")
    else:
        raise ApiError("'input_ids' (token ids) or 'text' is required", "input_ids")
    fields = body.sampling_params or GenerateSamplingFields()
    params = fields.sampling_params(GENERATE_MAX_TOKENS, prefix="sampling_params.")
    service.check_sampling_token_ids(params, "sampling_params.")
    service.check_length(ids, params, param)
    out, finish = await service.collect(request, ids, params)
    text = service.tokenizer.decode(out) if service.tokenizer else None
    return JSONResponse({"output_ids": out, "text": text,
                         "finish_reason": openai_finish_reason(finish),
                         "prompt_tokens": len(ids)})


@router.post("/v1/completions")
async def completions(request: Request, service: Service):
    body = parse_body(CompletionRequest, await request.body())
    service.check_model(body.model)
    prompts = [service.prompt_ids(p, "prompt") for p in body.prompt]
    params = body.sampling_params(COMPLETIONS_MAX_TOKENS, body.logprobs)
    service.check_sampling_token_ids(params)
    for ids in prompts:
        service.check_length(ids, params, "prompt")
    service.check_stops(body.stop)
    echo_texts = [service.prompt_text(p) for p in body.prompt] if body.echo else None
    job = CompletionJob(chat=False, prompts=prompts, params=params,
                        n=body.choices_per_prompt, stops=body.stop,
                        stream=bool(body.stream), include_usage=body.include_usage,
                        echo_texts=echo_texts)
    return await service.respond(request, job)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, service: Service):
    body = parse_body(ChatCompletionRequest, await request.body())
    service.check_model(body.model)
    messages = [m.model_dump() for m in body.messages]
    ids = service.prompt_ids(render_chat(service.tokenizer, messages), "messages")
    room = service.max_context - len(ids)
    params = body.sampling_params(max(1, min(CHAT_MAX_TOKENS_CAP, room)),
                                  body.logprobs_k, logprobs_name="top_logprobs")
    service.check_sampling_token_ids(params)
    service.check_length(ids, params, "messages")
    service.check_stops(body.stop)
    job = CompletionJob(chat=True, prompts=[ids], params=params, n=body.choices_per_prompt,
                        stops=body.stop, stream=bool(body.stream),
                        include_usage=body.include_usage)
    return await service.respond(request, job)
