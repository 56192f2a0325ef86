"""`fuseinfer serve [--model PATH] [--host 127.0.0.1] [--port 30000] [engine args]`.

The engine options come from EngineArgs (runtime/engine_args.py), with the serving GC
settings on by default; the options here are the server's own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any


def add_serve_parser(sub: Any) -> None:
    from ..runtime.engine_args import SERVING_GC, add_engine_args

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (the bundled tiny model "
                       "when --model is not given)")
    p.add_argument("--model", help="model folder or bundled name (default: tiny)")
    p.add_argument("--served-model-name", help="the name clients use (default: the folder's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--max-queued-requests", type=int,
                   help="requests allowed to wait beyond --max-running-requests; more get "
                   "HTTP 503 with Retry-After (default: unbounded)")
    p.add_argument("--request-timeout", type=float,
                   help="seconds a request may take; longer ones are aborted (HTTP 504)")
    add_engine_args(p, defaults=SERVING_GC)
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise SystemExit(f"fuseinfer serve needs {err.name}: pip install 'fuseinfer[serve]'"
                         ) from err

    from ..models.bundled import resolve_model
    from ..runtime.engine_args import engine_args_from
    from ..runtime.tokenizer import TextTokenizer
    from .app import create_app
    from .engine_client import EngineClient
    from .engine_process import start_engine_process
    from .messages import Stop

    folder = resolve_model(args.model)
    try:
        engine_args = engine_args_from(args, model=str(folder))
    except ValueError as err:
        raise SystemExit(f"fuseinfer serve: {err}") from err
    print(f"fuseinfer serve: loading {folder} ...", file=sys.stderr, flush=True)
    proc, inbox, outbox, info = start_engine_process(engine_args)
    tokenizer = TextTokenizer(folder) if (folder / "tokenizer.json").exists() else None
    name = args.served_model_name or (args.model or "tiny")
    client = EngineClient(inbox, outbox, info)
    if args.max_queued_requests is not None:
        client.capacity = engine_args.max_running_requests + max(args.max_queued_requests, 0)
    client.timeout_s = args.request_timeout
    app = create_app(client, name, tokenizer)
    print(f"fuseinfer serve: {name} on http://{args.host}:{args.port}", file=sys.stderr,
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="warning", timeout_graceful_shutdown=30))
    # SIGTERM/SIGINT: stop accepting, let in-flight requests finish, exit 0 (uvicorn's own
    # handler would re-raise the signal after shutting down).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve()

    try:
        asyncio.run(serve())
    finally:
        inbox.put(Stop())
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    return 0
