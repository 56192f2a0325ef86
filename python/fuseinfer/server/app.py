"""OpenAI-compatible HTTP front end (FastAPI) over the engine process.

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(streaming as server-sent events or not), POST /generate (token ids in and out). Bad
requests get HTTP 400 with an OpenAI-style error body. A streaming client that goes away
aborts its request, which frees its KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from ..runtime.sampling import SamplingParams
from ..runtime.tokenizer import IncrementalDetokenizer, TextTokenizer
from .metrics import ServerMetrics


class ApiError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": None}}


@dataclass
class Stream:
    """Tokens of one request as the engine process reports them."""

    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


def _deliver(items: list[tuple[Stream, tuple]]) -> None:
    for stream, update in items:
        stream.queue.put_nowait(update)


class EngineClient:
    """Sends requests to the engine process; a reader thread routes its replies to the
    waiting request's asyncio queue."""

    def __init__(self, inbox: Any, outbox: Any, info: dict) -> None:
        self.inbox, self.outbox, self.info = inbox, outbox, info
        self.streams: dict[int, tuple[asyncio.AbstractEventLoop, Stream]] = {}
        self.stats: dict = {}
        self.metrics = ServerMetrics()
        self.capacity: int | None = None  # running + queued requests allowed; None: no cap
        self.timeout_s: float | None = None  # per-request limit; None: none
        self._rid = itertools.count()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="engine-reader")
        self._reader.start()

    def _read(self) -> None:
        while True:
            msg = self.outbox.get()
            if msg[0] == "tokens":
                by_loop: dict[asyncio.AbstractEventLoop, list] = {}
                with self._lock:
                    for rid, *update in msg[1]:
                        entry = self.streams.get(rid)
                        if entry is not None:
                            by_loop.setdefault(entry[0], []).append((entry[1], tuple(update)))
                for loop, items in by_loop.items():  # one wake-up per loop and step
                    loop.call_soon_threadsafe(_deliver, items)
            elif msg[0] == "stats":
                self.stats = msg[1]

    def submit(self, prompt: list[int], params: SamplingParams) -> tuple[int, Stream]:
        """Queue a request; ApiError 503 when `capacity` requests are already in flight."""
        rid = next(self._rid)
        stream = Stream()
        with self._lock:  # checked and registered at once: no two requests take one place
            self._refuse_if_full(len(self.streams), 1)
            self.streams[rid] = (asyncio.get_running_loop(), stream)
        self.inbox.put(("add", rid, prompt, params))
        return rid, stream

    def check_capacity(self, n: int) -> None:
        """Refuse (HTTP 503) before a response starts if n more requests do not fit."""
        with self._lock:
            busy = len(self.streams)
        self._refuse_if_full(busy, n)

    def _refuse_if_full(self, busy: int, n: int) -> None:
        if self.capacity is not None and busy + n > self.capacity:
            raise ApiError(f"the server is at capacity ({self.capacity} requests running or "
                           "queued); retry later", status=503, kind="server_busy")

    def done(self, rid: int, aborted: bool) -> None:
        with self._lock:
            self.streams.pop(rid, None)
        if aborted:
            self.inbox.put(("abort", rid))

    async def tokens(self, rid: int, stream: Stream) -> AsyncIterator[tuple[list[int],
                                                                            str | None, Any]]:
        """(new tokens, finish reason or None, their logprob entries or None) until the
        request finishes; aborts it if the consumer stops early (a client that went away)."""
        finished = False
        m = self.metrics
        start = last = time.perf_counter()
        first = True
        deadline = None if self.timeout_s is None else start + self.timeout_s
        try:
            while True:
                try:
                    if deadline is None:  # the common case: no timer per token
                        tokens, finish, prompt_len, lps = await stream.queue.get()
                    else:
                        tokens, finish, prompt_len, lps = await asyncio.wait_for(
                            stream.queue.get(), max(deadline - time.perf_counter(), 0.0))
                except asyncio.TimeoutError:
                    raise ApiError(f"the request exceeded the {self.timeout_s:g} s request "
                                   "timeout and was aborted", status=504,
                                   kind="timeout") from None
                now = time.perf_counter()
                if tokens:
                    with m.lock:
                        (m.ttft if first else m.itl).observe(now - (start if first else last))
                        # tokens arriving together share the gap since the last arrival
                        for _ in tokens[1:]:
                            m.itl.observe(0.0)
                        m.generation_tokens += len(tokens)
                    first, last = False, now
                if finish is not None:
                    with m.lock:
                        m.e2e.observe(now - start)
                        m.requests += 1
                        m.prompt_tokens += prompt_len
                yield tokens, finish, lps
                if finish is not None:
                    finished = True
                    return
        finally:
            self.done(rid, aborted=not finished)

    def freeze_gc(self) -> None:
        self.inbox.put(("freeze_gc",))


def _number(body: dict, key: str, default: Any, kind: type) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ApiError(f"'{key}' must be a {kind.__name__}, got {type(value).__name__}", key)
    return value


def sampling_from_body(body: dict, max_default: int, eos_stop: bool = True) -> SamplingParams:
    max_tokens = _number(body, "max_tokens", None, int)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", max_default, int)
    if max_tokens <= 0:
        raise ApiError(f"'max_tokens' must be > 0, got {max_tokens}", "max_tokens")
    temperature = _number(body, "temperature", 1.0, float)
    if temperature < 0:
        raise ApiError(f"'temperature' must be >= 0, got {temperature}", "temperature")
    top_p = _number(body, "top_p", 1.0, float)
    if not 0 < top_p <= 1:
        raise ApiError(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    top_k = _number(body, "top_k", -1, int)
    seed = _number(body, "seed", None, int)
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) for t in stop_ids):
        raise ApiError("'stop_token_ids' must be a list of integers", "stop_token_ids")
    logprobs = body.get("logprobs")
    if isinstance(logprobs, bool):  # chat: logprobs: true, top_logprobs: k
        top = _number(body, "top_logprobs", 0, int)
        logprobs = top if logprobs else None
    elif logprobs is not None:  # completions: logprobs: k
        logprobs = _number(body, "logprobs", 0, int)
    if logprobs is not None and not 0 <= logprobs <= 20:
        raise ApiError(f"logprobs must be in [0, 20], got {logprobs}", "logprobs")
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, min_p=_number(body, "min_p", 0.0, float), seed=seed,
                            stop_token_ids=tuple(stop_ids),
                            ignore_eos=bool(body.get("ignore_eos", False)), logprobs=logprobs)
    try:
        params.validate()
    except ValueError as err:
        raise ApiError(str(err)) from err
    return params


def create_app(client: EngineClient, model_name: str, tokenizer: TextTokenizer | None):
    app = FastAPI(title="fuseinfer")
    max_context = client.info["max_context"]

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(f"invalid request: {err.errors()[0].get('msg')}").body(),
                            status_code=400)

    async def read_json(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(f"the request body is not valid JSON: {err}") from err
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        return body

    def check_model(body: dict) -> None:
        name = body.get("model")
        if name is not None and name != model_name:
            raise ApiError(f"the model '{name}' does not exist; this server serves "
                           f"'{model_name}'", "model")

    def prompt_ids(prompt: Any, param: str) -> list[int]:
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ApiError("this model has no tokenizer: send token ids", param)
            return tokenizer.encode(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return prompt
        raise ApiError(f"'{param}' must be a string or a non-empty list of token ids", param)

    def check_length(ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise ApiError("the prompt is empty", "prompt")
        if len(ids) + params.max_new_tokens > max_context:
            raise ApiError(f"the prompt ({len(ids)} tokens) plus max_tokens "
                           f"({params.max_new_tokens}) exceeds the context length "
                           f"{max_context}", "prompt")

    async def run(ids: list[int], params: SamplingParams):
        rid, stream = client.submit(ids, params)
        return client.tokens(rid, stream)

    async def collect(ids: list[int], params: SamplingParams) -> tuple[list[int], str | None]:
        out: list[int] = []
        reason = None
        async for tokens, finish, _ in await run(ids, params):
            out += tokens
            reason = finish
        return out, reason

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse(client.metrics.render(client.stats),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/freeze_gc")
    async def freeze_gc() -> dict:
        """Freeze the garbage collector's survivors in both processes (after warm-up)."""
        import gc

        gc.collect()
        gc.freeze()
        client.freeze_gc()
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": 0, "owned_by": "fuseinfer"}]}

    @app.post("/generate")
    async def generate(request: Request) -> JSONResponse:
        body = await read_json(request)
        ids = prompt_ids(body.get("input_ids", body.get("text")), "input_ids")
        params = sampling_from_body(body.get("sampling_params") or {}, 128)
        check_length(ids, params)
        out, finish = await collect(ids, params)
        if finish is not None and finish.startswith("rejected"):
            raise ApiError(finish)
        text = tokenizer.decode(out) if tokenizer else None
        return JSONResponse({"output_ids": out, "text": text, "finish_reason": finish,
                             "prompt_tokens": len(ids)})

    def finish_reason(reason: str | None) -> str | None:
        return {"stop": "stop", "length": "length", "abort": "abort"}.get(reason or "", reason)

    async def pieces(ids: list[int], params: SamplingParams, stops: list[str]
                     ) -> AsyncIterator[tuple[str, int, str | None, list]]:
        """(new text, new tokens, finish reason or None). With stop strings, text that could
        start one is held back; a match ends the request there (finish "stop") and aborts
        it in the engine."""
        detok = IncrementalDetokenizer(tokenizer) if tokenizer else None
        hold = max((len(x) for x in stops), default=1) - 1
        pending = ""
        gen = await run(ids, params)
        try:
            async for tokens, finish, lps in gen:
                pending += "".join(detok.add(t) for t in tokens) if detok else ""
                items = list(zip(tokens, lps, strict=True)) if lps else []
                if stops:
                    hits = [i for i in (pending.find(x) for x in stops) if i >= 0]
                    if hits:
                        yield pending[:min(hits)], len(tokens), "stop", items
                        return
                    if finish is None and hold:
                        cut = max(len(pending) - hold, 0)
                        yield pending[:cut], len(tokens), None, items
                        pending = pending[cut:]
                        continue
                yield pending, len(tokens), finish, items
                pending = ""
        finally:
            await gen.aclose()

    def token_text(t: int) -> str:
        return tokenizer.decode([t], skip_special_tokens=False) if tokenizer else str(t)

    def format_logprobs(items: list, chat: bool, offset: int) -> dict:
        """OpenAI logprobs: chat's `content` list, or the completions legacy columns."""
        if chat:
            return {"content": [
                {"token": token_text(t), "logprob": lp,
                 "bytes": list(token_text(t).encode()),
                 "top_logprobs": [{"token": token_text(u), "logprob": v,
                                   "bytes": list(token_text(u).encode())} for u, v in top]}
                for t, (lp, top) in items]}
        texts = [token_text(t) for t, _ in items]
        offsets, at = [], offset
        for s in texts:
            offsets.append(at)
            at += len(s)
        return {"tokens": texts, "token_logprobs": [lp for _, (lp, _) in items],
                "top_logprobs": [{token_text(u): v for u, v in top} for _, (_, top) in items],
                "text_offset": offsets}

    def choice_params(params: SamplingParams, i: int) -> SamplingParams:
        """The i-th of n choices: its own seed when the request has one."""
        return replace(params, seed=None if params.seed is None else params.seed + i)

    async def single(ids: list[int], params: SamplingParams, stops: list[str]
                     ) -> AsyncIterator[tuple[int, str, int, str | None, list]]:
        """merged() for n = 1, without its task and queue hop per token."""
        async for text, count, finish, items in pieces(ids, params, stops):
            yield 0, text, count, finish, items

    async def merged(ids: list[int], params: SamplingParams, stops: list[str], n: int
                     ) -> AsyncIterator[tuple[int, str, int, str | None, list]]:
        """(choice index, new text, new tokens, finish) from n choices as they come; an
        early exit (client gone) cancels them all, which aborts their engine requests."""
        queue: asyncio.Queue = asyncio.Queue()

        async def feed(i: int) -> None:
            try:
                async for text, count, finish, items in pieces(ids, choice_params(params, i),
                                                               stops):
                    await queue.put((i, text, count, finish, items))
            except ApiError as err:  # hand it to the consumer
                await queue.put((i, err, 0, None, []))
            finally:
                await queue.put((i, None, 0, None, []))

        tasks = [asyncio.create_task(feed(i)) for i in range(n)]
        try:
            live = n
            while live:
                i, text, count, finish, items = await queue.get()
                if text is None:
                    live -= 1
                    continue
                if isinstance(text, ApiError):
                    raise text
                yield i, text, count, finish, items
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def complete(request: Request, body: dict, ids: list[int], params: SamplingParams,
                       chat: bool):
        created = int(time.time())
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        obj = "chat.completion" if chat else "text_completion"
        stops = stop_strings(body)
        if stops and tokenizer is None:
            raise ApiError("'stop' strings need the model's tokenizer", "stop")
        n = _number(body, "n", 1, int)
        if not 1 <= n <= 16:
            raise ApiError(f"'n' must be in [1, 16], got {n}", "n")
        client.check_capacity(n)
        wants_lp = params.logprobs is not None
        if body.get("stream"):
            # Every chunk shares its head; only the choice is encoded per token (this loop
            # runs once per token of every stream, so it is kept lean).
            head = "data: " + json.dumps({"id": cid, "object": obj + (".chunk" if chat else ""),
                                          "created": created, "model": model_name})[:-1]
            text_key = '{"content": ' if chat else ""

            async def events() -> AsyncIterator[str]:
                produced = 0
                source = single(ids, params, stops) if n == 1 else \
                    merged(ids, params, stops, n)
                try:
                    # closed on any exit (a client that went away included): aborts the
                    # engine requests now, not when the generators are collected
                    async with contextlib.aclosing(source):
                        async for i, text, count, finish, items in source:
                            produced += count
                            lp = json.dumps(format_logprobs(items, chat, 0)) if wants_lp \
                                else "null"
                            fr = finish_reason(finish)
                            body_text = json.dumps(text)
                            content = f'"delta": {text_key}{body_text}}}' if chat \
                                else f'"text": {body_text}'
                            yield (f'{head}, "choices": [{{"index": {i}, {content}, "logprobs": '
                                   f'{lp}, "finish_reason": {json.dumps(fr)}}}]}}\n\n')
                except ApiError as err:  # the response has started: report it in-stream
                    yield f"data: {json.dumps(err.body())}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": len(ids), "completion_tokens": produced,
                             "total_tokens": len(ids) + produced}
                    yield f'{head}, "choices": [], "usage": {json.dumps(usage)}}}\n\n'
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        texts: list[list[str]] = [[] for _ in range(n)]
        lp_items: list[list] = [[] for _ in range(n)]
        finishes: list[str | None] = [None] * n
        produced = 0
        async def gather_all() -> None:
            nonlocal produced
            async for i, text, count, finish, items in merged(ids, params, stops, n):
                texts[i].append(text)
                lp_items[i] += items
                produced += count
                finishes[i] = finish or finishes[i]

        work = asyncio.create_task(gather_all())
        while not work.done():  # a client that goes away aborts the request (and its KV)
            await asyncio.wait({work}, timeout=0.1)
            if not work.done() and await request.is_disconnected():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                raise ApiError("the client disconnected", status=499, kind="aborted")
        work.result()  # re-raises an ApiError (timeout, capacity)
        rejected = next((f for f in finishes if f and f.startswith("rejected")), None)
        if rejected:
            raise ApiError(rejected)
        choices = []
        for i in range(n):
            text = "".join(texts[i])
            choice = {"index": i, "finish_reason": finish_reason(finishes[i]),
                      "logprobs": format_logprobs(lp_items[i], chat, 0) if wants_lp else None}
            choice |= {"message": {"role": "assistant", "content": text}} if chat \
                else {"text": text}
            choices.append(choice)
        return JSONResponse({"id": cid, "object": obj, "created": created,
                             "model": model_name, "choices": choices,
                             "usage": {"prompt_tokens": len(ids),
                                       "completion_tokens": produced,
                                       "total_tokens": len(ids) + produced}})

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        check_model(body)
        if "prompt" not in body:
            raise ApiError("'prompt' is required", "prompt")
        ids = prompt_ids(body["prompt"], "prompt")
        params = sampling_from_body(body, 16)
        check_length(ids, params)
        return await complete(request, body, ids, params, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            raise ApiError("'messages' must be a non-empty list of {role, content} objects",
                           "messages")
        ids = prompt_ids(render_chat(tokenizer, messages), "messages")
        params = sampling_from_body(body, max(1, min(1024, max_context - len(ids))))
        check_length(ids, params)
        return await complete(request, body, ids, params, chat=True)

    return app


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(x, str) for x in stop):
        raise ApiError("'stop' must be a string or a list of up to 4 strings", "stop")
    return [x for x in stop if x]


def render_chat(tokenizer: TextTokenizer | None, messages: list[dict]) -> str:
    """The conversation through the tokenizer's chat template (ChatML if it has none)."""
    if tokenizer is None:
        raise ApiError("this model has no tokenizer: chat needs one", "messages")
    template = tokenizer.config.get("chat_template")
    if not template:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                       for m in messages) + "<|im_start|>assistant\n"
    import jinja2

    env = jinja2.Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)
