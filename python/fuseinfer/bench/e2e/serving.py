"""`fuseinfer bench serving`: load an OpenAI-compatible server and measure it.

Requests are streamed completions with token-id prompts (so no tokenizer is needed on the
client); arrivals are Poisson at --request-rate (inf: all at once) with at most
--max-concurrency in flight. Datasets: `random` (input and output lengths as given) and
`sharegpt-like` (synthetic lengths drawn around a conversational mix: inputs log-normal
around 250 tokens, outputs around 200, clipped). Reports request and token throughput and
TTFT, ITL and end-to-end latency p50/p90/p99, as a table and JSON.

Token ids are drawn below the vocabulary size the server reports on /v1/models
(`vocab_size` of the model's entry) unless --vocab-size is given; a server that reports none
gets ids below FALLBACK_VOCAB, with a warning. A request that errs, ends early or takes
longer than --request-timeout counts as failed; the run always ends with its table, also
when the server refuses connections or dies mid-run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Suite, register_suite

FALLBACK_VOCAB = 256  # every model has at least this many ids (byte-level tokenizers do)
DEFAULT_REQUEST_TIMEOUT_S = 600.0


@dataclass
class Result:
    ok: bool
    prompt_tokens: int
    output_tokens: int = 0
    ttft: float = 0.0
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    error: str = ""
    timed_out: bool = False


def make_requests(dataset: str, n: int, input_len: int, output_len: int, vocab: int,
                  seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if dataset == "random":
            n_in, n_out = input_len, output_len
        else:  # sharegpt-like
            n_in = int(min(max(rng.lognormvariate(math.log(250), 0.8), 4), 2048))
            n_out = int(min(max(rng.lognormvariate(math.log(200), 0.7), 4), 1024))
        out.append(([rng.randrange(10, vocab) for _ in range(n_in)], n_out))
    return out


async def _body_lines(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body's lines as they arrive, decoding chunked transfer encoding."""
    if not chunked:
        while line := await reader.readline():
            yield line
        return
    pending = b""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        pending += await reader.readexactly(size)
        await reader.readexactly(2)  # the CRLF after each chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


async def _one(host: str, port: int, path: str, model: str, prompt: list[int],
               max_tokens: int, extra_headers: str = "") -> Result:
    """One streamed completion over a bare asyncio connection (HTTP/1.0: the server closes
    the connection at the end; chunked bodies are decoded too). A full HTTP client costs
    more per line than the server spends per token and would measure itself at high token
    rates. A stream counts as complete only when it ends with [DONE]."""
    res = Result(ok=False, prompt_tokens=len(prompt))
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "stream": True, "temperature": 0.0, "ignore_eos": True}).encode()
    head = (f"POST {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra_headers}\r\n")
    start = last = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        writer.write(head.encode() + body)
        status = (await reader.readline()).split()
        chunked = False
        while header := (await reader.readline()).strip():
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if len(status) < 2 or status[1] != b"200":
            text = b"".join([line async for line in _body_lines(reader, chunked)])
            res.error = f"HTTP {b' '.join(status[1:]).decode(errors='replace')}: " \
                f"{text[:200].decode(errors='replace')}"
            return res
        async for line in _body_lines(reader, chunked):
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                res.ok = True
                break
            if line.startswith(b'data: {"error"'):
                res.error = json.loads(line[6:])["error"]["message"]
                return res
            now = time.perf_counter()
            if res.output_tokens == 0:
                res.ttft = now - start
            else:
                res.itls.append(now - last)
            last = now
            res.output_tokens += 1
        res.e2e = time.perf_counter() - start
        if not res.ok:
            res.error = "the stream ended without [DONE]"
    except Exception as err:  # a lost request is a result, not a crash of the benchmark
        res.error = f"{type(err).__name__}: {err}"
    finally:
        if writer is not None:
            writer.close()
    return res


async def _one_within(timeout_s: float | None, host: str, port: int, path: str, model: str,
                      prompt: list[int], max_tokens: int, extra_headers: str = "") -> Result:
    """_one, failed (not hung) when the server takes longer than timeout_s."""
    try:
        return await asyncio.wait_for(
            _one(host, port, path, model, prompt, max_tokens, extra_headers), timeout_s)
    except asyncio.TimeoutError:
        return Result(ok=False, prompt_tokens=len(prompt), timed_out=True,
                      error=f"no complete answer within --request-timeout {timeout_s:g} s")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


async def run_benchmark(base: str, requests: list[tuple[list[int], int]], rate: float,
                        concurrency: int | None, model: str, seed: int = 0,
                        progress: bool = True,
                        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_S,
                        api_key: str | None = None) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from ..progress import Progress

    url = urlsplit(base)
    if url.scheme != "http" or not url.hostname:
        raise SystemExit(f"--base-url must be http://host[:port], got {base}")
    host, port = url.hostname, url.port or 80
    path = url.path.rstrip("/") + "/v1/completions"
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    results: list[Result] = []
    with Progress(len(requests), "bench serving") as bar:
        async def go(prompt: list[int], n: int) -> None:
            if sem is None:
                res = await _one_within(request_timeout, host, port, path, model, prompt, n,
                                        auth)
            else:
                async with sem:
                    res = await _one_within(request_timeout, host, port, path, model, prompt,
                                            n, auth)
            results.append(res)
            if progress:
                bar.step(f"{len(results)}/{len(requests)} done")

        start = time.perf_counter()
        tasks = []
        for prompt, n in requests:
            tasks.append(asyncio.create_task(go(prompt, n)))
            if math.isfinite(rate) and rate > 0:
                await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks, return_exceptions=True)  # the table comes regardless
        duration = max(time.perf_counter() - start, 1e-9)
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    itls = [x for r in ok for x in r.itls]
    summary: dict[str, Any] = {
        "requests": len(requests), "completed": len(ok), "failed": len(requests) - len(ok),
        "timed_out": sum(r.timed_out for r in results),
        "duration_s": duration, "request_throughput": len(ok) / duration,
        "input_tokens": in_tokens, "output_tokens": out_tokens,
        "output_tok_per_s": out_tokens / duration,
        "total_tok_per_s": (in_tokens + out_tokens) / duration,
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }
    for name, values in (("ttft_ms", [r.ttft * 1e3 for r in ok]),
                         ("itl_ms", [x * 1e3 for x in itls]),
                         ("e2e_ms", [r.e2e * 1e3 for r in ok])):
        for q in (50, 90, 99):
            summary[f"{name}_p{q}"] = _pct(values, q)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:30000")
    parser.add_argument("--model", help="model name to send (default: the server's first)")
    parser.add_argument("--dataset", choices=["random", "sharegpt-like"], default="random")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="Poisson arrivals per second (default inf: all at once)")
    parser.add_argument("--max-concurrency", type=int, help="requests in flight at most")
    parser.add_argument("--random-input", type=int, default=256)
    parser.add_argument("--random-output", type=int, default=64)
    parser.add_argument("--vocab-size", type=int,
                        help="token ids are drawn below this (default: the vocab_size the "
                        f"server reports on /v1/models, else {FALLBACK_VOCAB})")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (default: "
                        "$FUSEINFER_API_KEY, if set)")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="seconds a request may take before it counts as failed "
                        f"(default {DEFAULT_REQUEST_TIMEOUT_S:g}; 0: no limit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--record", action="store_true",
                        help="append a row to microbench/results/<gpu>/serving.json (the "
                        "GPU of this machine: run the client where the server runs)")
    parser.add_argument("--continue-run", action="store_true",
                        help="with --record: add to the latest recorded serving run")


def _warn(message: str) -> None:
    print(f"fuseinfer bench serving: warning: {message}", file=sys.stderr, flush=True)


def server_model(base: str, wanted: str | None, api_key: str | None = None
                 ) -> tuple[str, int | None]:
    """The model name to send and the vocabulary size the server reports for it (None when
    it reports none). An unreachable server is a warning, not an error: the run goes on and
    counts its requests as failed."""
    import urllib.request

    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        request = urllib.request.Request(base + "/v1/models", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as r:
            models = [m for m in json.load(r)["data"] if isinstance(m, dict)]
    except Exception as err:
        _warn(f"cannot read {base}/v1/models: {err}")
        return wanted or "default", None
    entry = next((m for m in models if m.get("id") == wanted), None) if wanted else \
        (models[0] if models else None)
    model = wanted or (str(entry["id"]) if entry and "id" in entry else "default")
    vocab = entry.get("vocab_size") if entry else None
    ok = isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 10
    return model, vocab if ok else None


def run_command(args: argparse.Namespace) -> int:
    base = args.base_url.rstrip("/")
    if args.num_prompts < 1 or args.random_input < 1 or args.random_output < 1:
        raise SystemExit("--num-prompts, --random-input and --random-output must be >= 1")
    if args.vocab_size is not None and args.vocab_size <= 10:
        raise SystemExit("--vocab-size must be > 10 (ids are drawn from [10, vocab))")
    api_key = args.api_key or os.environ.get("FUSEINFER_API_KEY")
    model, reported = server_model(base, args.model, api_key)
    vocab = args.vocab_size or reported
    if vocab is None:
        _warn(f"the server reports no vocab_size on /v1/models: token ids are drawn below "
              f"{FALLBACK_VOCAB} (--vocab-size sets it)")
        vocab = FALLBACK_VOCAB
    reqs = make_requests(args.dataset, args.num_prompts, args.random_input,
                         args.random_output, vocab, args.seed)
    timeout = args.request_timeout if args.request_timeout and args.request_timeout > 0 \
        else None
    summary = asyncio.run(run_benchmark(base, reqs, args.request_rate, args.max_concurrency,
                                        model, args.seed, request_timeout=timeout,
                                        api_key=api_key))
    summary |= {"base_url": base, "model": model, "vocab_size": vocab, "dataset": args.dataset,
                "request_rate": args.request_rate if math.isfinite(args.request_rate)
                else "inf", "max_concurrency": args.max_concurrency}
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = f"{value:.2f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.record:
        from ..report import record_results
        from .columns import SERVING_COLUMNS

        shape = f"{args.random_input} in / {args.random_output} out" \
            if args.dataset == "random" else "sharegpt-like"
        limit = f", concurrency {args.max_concurrency}" if args.max_concurrency else ""
        row = {"workload": f"{args.num_prompts} x {shape}, rate {summary['request_rate']}"
               f"{limit}", **summary}
        record_results("serving", SERVING_COLUMNS, [row], continue_last=args.continue_run)
    return 0 if summary["failed"] == 0 else 1


register_suite(Suite(
    name="serving", help="load an OpenAI-compatible server: throughput and TTFT/ITL/E2E "
    "latency percentiles", run=run_command, add_arguments=add_arguments, needs_gpu=False,
    records="serving"))
