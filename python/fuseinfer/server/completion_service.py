"""Completions and chat completions: prompts in, one engine request per choice, and the
OpenAI response out (one JSON body, or server-sent events).

A request has one or more prompts (batched completions) and `n` choices per prompt:
choice `j * n + i` is prompt j's i-th. With a seed, the i-th choice of every prompt uses
seed + i, so each prompt of a batch gets the choices it would get alone. With `echo`
(completions), each choice's text starts with its prompt's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..runtime.sampling import SamplingParams, outside_vocabulary
from ..runtime.step_output import FinishReason
from ..runtime.tokenizer import TextTokenizer
from .engine_client import EngineClient
from .errors import ApiError
from .openai_format import LogprobItem, format_logprobs, openai_finish_reason
from .sse import DONE, ChunkEncoder, error_event
from .text_budget import max_prompt_bytes, utf8_size
from .text_streams import Generation, IndexedPiece, choice_pieces, with_echo

DISCONNECT_POLL_S = 0.1


@dataclass(frozen=True)
class CompletionJob:
    """A parsed completions or chat request, its prompts already token ids."""

    chat: bool
    prompts: list[list[int]]
    params: SamplingParams
    n: int  # choices per prompt
    stops: list[str]
    stream: bool
    include_usage: bool
    echo_texts: list[str] | None = None  # `echo`: each prompt's text, put before its choices'

    def generations(self) -> list[Generation]:
        seed = self.params.seed
        return [Generation(j * self.n + i, ids,
                           self.params if seed is None else replace(self.params, seed=seed + i))
                for j, ids in enumerate(self.prompts) for i in range(self.n)]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    def echo_text(self, index: int) -> str:
        """The prompt text choice `index` starts with."""
        return self.echo_texts[index // self.n] if self.echo_texts else ""


class CompletionService:
    """What the routes share: the engine client, the served name and the tokenizer."""

    def __init__(self, client: EngineClient, model_name: str,
                 tokenizer: TextTokenizer | None) -> None:
        self.client, self.model_name, self.tokenizer = client, model_name, tokenizer
        self.max_context = client.info.max_context
        self.vocab_size = client.info.vocab_size
        self.max_prompt_bytes = max_prompt_bytes(tokenizer, self.max_context) \
            if tokenizer is not None else 0

    # ---- checks -------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ApiError(f"the model '{name}' does not exist; this server serves "
                           f"'{self.model_name}'", "model")

    def check_token_ids(self, ids: list[int] | tuple[int, ...], param: str) -> None:
        """Every id in [0, vocab): the engine checks too, but refusing here keeps a bad
        request out of the engine process entirely."""
        why = outside_vocabulary(self.vocab_size, ids)
        if why is not None:
            raise ApiError(why, param)

    def check_sampling_token_ids(self, params: SamplingParams, prefix: str = "") -> None:
        """The token ids inside the sampling fields (`prefix`: where they sit in the body)."""
        self.check_token_ids(params.stop_token_ids, prefix + "stop_token_ids")
        if params.logit_bias:
            self.check_token_ids([t for t, _ in params.logit_bias], prefix + "logit_bias")

    def prompt_ids(self, prompt: str | list[int], param: str) -> list[int]:
        if isinstance(prompt, list):
            self.check_token_ids(prompt, param)
            return prompt
        if self.tokenizer is None:
            raise ApiError("this model has no tokenizer: send token ids", param)
        size = utf8_size(prompt)
        if size > self.max_prompt_bytes:
            raise ApiError(f"the prompt ({size} bytes of text) cannot fit in the context "
                           f"length {self.max_context}", param)
        return self.tokenizer.encode(prompt)

    def prompt_text(self, prompt: str | list[int]) -> str:
        """A prompt as `echo` shows it: a string as given; token ids decoded as the
        completion's text is (without a tokenizer: each id as text, as in logprobs)."""
        if isinstance(prompt, str):
            return prompt
        if self.tokenizer is not None:
            return self.tokenizer.decode(prompt)
        return "".join(map(self.token_text, prompt))

    def check_length(self, ids: list[int], params: SamplingParams, param: str) -> None:
        if not ids:
            raise ApiError("the prompt is empty", param)
        if len(ids) + params.max_new_tokens > self.max_context:
            raise ApiError(f"the prompt ({len(ids)} tokens) plus max_tokens "
                           f"({params.max_new_tokens}) exceeds the context length "
                           f"{self.max_context}", param)

    def check_stops(self, stops: list[str]) -> None:
        if stops and self.tokenizer is None:
            raise ApiError("'stop' strings need the model's tokenizer", "stop")

    # ---- /generate ----------------------------------------------------------------------
    async def collect(self, request: Request, ids: list[int], params: SamplingParams
                      ) -> tuple[list[int], FinishReason | None]:
        """All tokens of one request and how it finished; aborted if the client goes away."""
        out: list[int] = []
        reason = None

        async def gather() -> None:
            nonlocal reason
            rid, stream = self.client.submit(ids, params)
            tokens_of = self.client.tokens(rid, stream)
            async with contextlib.aclosing(tokens_of):
                async for tokens, finish, _ in tokens_of:
                    out.extend(tokens)
                    reason = finish

        await _unless_disconnected(request, gather())
        return out, reason

    # ---- completions and chat -----------------------------------------------------------
    def token_text(self, t: int) -> str:
        return self.tokenizer.decode([t], skip_special_tokens=False) if self.tokenizer \
            else str(t)

    async def respond(self, request: Request, job: CompletionJob):
        self.client.check_capacity(len(job.prompts) * job.n)
        cid = f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if job.stream:
            encoder = ChunkEncoder(cid, created, self.model_name, job.chat)
            return StreamingResponse(self._events(job, encoder), media_type="text/event-stream")
        return await self._whole(request, job, cid, created)

    def _pieces(self, job: CompletionJob, gens: list[Generation]
                ) -> AsyncIterator[IndexedPiece]:
        source = choice_pieces(self.client, self.tokenizer, gens, job.stops)
        return with_echo(source, job.echo_text) if job.echo_texts else source

    async def _events(self, job: CompletionJob, encoder: ChunkEncoder) -> AsyncIterator[str]:
        """The response's events. This loop runs once per token of every stream: it only
        encodes the choice (the head is encoded once) and the logprobs when asked for."""
        produced = 0
        wants_lp = job.params.logprobs is not None
        source = self._pieces(job, job.generations())
        try:
            # closed on any exit (a client that went away included): aborts the engine
            # requests now, not when the generators are collected
            async with contextlib.aclosing(source):
                async for i, text, count, finish, items in source:
                    produced += count
                    lp = json.dumps(format_logprobs(items, job.chat, self.token_text)) \
                        if wants_lp else "null"
                    yield encoder.choice(i, text, openai_finish_reason(finish), lp)
        except ApiError as err:  # the response has started: report it in-stream
            yield error_event(err.body())
        if job.include_usage:
            yield encoder.usage(job.prompt_tokens, produced)
        yield DONE

    async def _whole(self, request: Request, job: CompletionJob, cid: str, created: int
                     ) -> JSONResponse:
        gens = job.generations()
        texts: list[list[str]] = [[] for _ in gens]
        lp_items: list[list[LogprobItem]] = [[] for _ in gens]
        finishes: list[FinishReason | None] = [None] * len(gens)
        produced = 0

        async def gather_all() -> None:
            nonlocal produced
            source = self._pieces(job, gens)
            async with contextlib.aclosing(source):
                async for i, text, count, finish, items in source:
                    texts[i].append(text)
                    lp_items[i] += items
                    produced += count
                    finishes[i] = finish or finishes[i]

        await _unless_disconnected(request, gather_all())
        wants_lp = job.params.logprobs is not None
        choices = []
        for i in range(len(gens)):
            text = "".join(texts[i])
            choice = {"index": i, "finish_reason": openai_finish_reason(finishes[i]),
                      "logprobs": format_logprobs(lp_items[i], job.chat, self.token_text)
                      if wants_lp else None}
            choice |= {"message": {"role": "assistant", "content": text}} if job.chat \
                else {"text": text}
            choices.append(choice)
        return JSONResponse({
            "id": cid, "object": "chat.completion" if job.chat else "text_completion",
            "created": created, "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": produced,
                      "total_tokens": job.prompt_tokens + produced}})


async def _unless_disconnected(request: Request, work_done: Coroutine[Any, Any, None]) -> None:
    """Run `work_done`; a client that goes away first cancels it, which aborts its engine
    requests (and frees their KV). Re-raises the work's ApiError (timeout, capacity,
    rejection)."""
    work = asyncio.create_task(work_done)
    while not work.done():
        await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if not work.done() and await request.is_disconnected():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise ApiError("the client disconnected", status=499, kind="aborted")
    work.result()
