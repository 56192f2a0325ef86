"""`fuseinfer serve [--model PATH] [--host 127.0.0.1] [--port 30000] [engine args]`.

The engine options come from EngineArgs (runtime/engine_args.py), with the serving GC
settings on by default; the options here are the server's own. The port is bound before
the engine loads (a busy port fails at once), and "ready" is printed only once the engine
has warmed up and the server accepts connections."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from typing import Any

from .body_limit import DEFAULT_MAX_REQUEST_BYTES

READY_POLL_S = 0.02


class _StoreGiven(argparse.Action):
    """Store the value and note that it was given: --seed's default stays the library's 0,
    yet serve picks a random seed when none is given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def add_serve_parser(sub: Any) -> None:
    from ..runtime.engine_args import SERVING_GC, add_engine_args

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (the bundled tiny model "
                       "when --model is not given)")
    p.add_argument("--model", help="model folder or bundled name (default: tiny)")
    p.add_argument("--served-model-name", help="the name clients use (default: the folder's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000, help="0: any free port (printed)")
    p.add_argument("--max-queued-requests", type=int,
                   help="requests allowed to wait beyond --max-running-requests; more get "
                   "HTTP 503 with Retry-After (default: unbounded)")
    p.add_argument("--request-timeout", type=float,
                   help="seconds a request may take; longer ones are aborted (HTTP 504)")
    p.add_argument("--api-key", default=os.environ.get("FUSEINFER_API_KEY") or None,
                   help="every endpoint but /health needs 'Authorization: Bearer KEY' "
                   "(default: $FUSEINFER_API_KEY; none: no key)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="larger request bodies get HTTP 413 (default: "
                   f"{DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--seed", type=int, default=0, action=_StoreGiven,
                   help="engine seed: of unseeded sampling and of --load-format dummy "
                   "weights (default: random per start; a request's own seed is always "
                   "reproducible)")
    add_engine_args(p, exclude=("model", "seed"), defaults=SERVING_GC)
    p.set_defaults(handler=_run_serve, seed_given=False)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a busy port is a usage error before the
    engine loads; uvicorn serves on it."""
    from ..runtime.cli import UsageExit

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise UsageExit("serve", f"--host {host}: {err.strerror or err}") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        busy = err.errno == errno.EADDRINUSE
        reason = "the port is in use" if busy else (err.strerror or str(err))
        raise UsageExit("serve", f"cannot listen on {host}:{port}: {reason}") from err
    sock.set_inheritable(True)
    return sock


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise SystemExit(f"fuseinfer serve needs {err.name}: pip install 'fuseinfer[serve]'"
                         ) from err

    from ..runtime.cli import UsageExit, random_engine_seed, resolve_engine_args
    from ..runtime.gc_control import freeze_after_warmup
    from ..runtime.tokenizer import TextTokenizer
    from .app import create_app
    from .engine_client import EngineClient
    from .engine_process import start_engine_process
    from .messages import Stop

    if args.api_key is not None and not args.api_key:
        raise UsageExit("serve", "--api-key must not be empty")
    if args.max_request_bytes < 1:
        raise UsageExit("serve", f"--max-request-bytes must be >= 1, got "
                        f"{args.max_request_bytes}")
    seed = args.seed if args.seed_given else random_engine_seed()
    folder, engine_args = resolve_engine_args("serve", args, seed)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"fuseinfer serve: loading {folder} (engine seed {seed}) ...", file=sys.stderr,
          flush=True)
    try:
        proc, inbox, outbox, info = start_engine_process(engine_args)
    except BaseException:
        sock.close()
        raise
    tokenizer = TextTokenizer(folder) if (folder / "tokenizer.json").exists() else None
    name = args.served_model_name or (args.model or "tiny")
    client = EngineClient(inbox, outbox, info)
    if args.max_queued_requests is not None:
        client.capacity = engine_args.max_running_requests + max(args.max_queued_requests, 0)
    client.timeout_s = args.request_timeout
    app = create_app(client, name, tokenizer, api_key=args.api_key,
                     max_request_bytes=args.max_request_bytes)
    if engine_args.gc_freeze:
        # This process too: its modules, app and engine client stay for good, and a full
        # collection scanning them mid-stream stalls every stream's next token.
        freeze_after_warmup()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    # SIGTERM/SIGINT: stop accepting, let in-flight requests finish, exit 0 (uvicorn's own
    # handler would re-raise the signal after shutting down).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    # The engine died: stop serving (from the client's watcher thread) and exit non-zero.
    client.on_engine_death = lambda: setattr(server, "should_exit", True)

    async def announce_ready() -> None:
        while not server.started:  # set once uvicorn listens on the socket
            if server.should_exit:
                return
            await asyncio.sleep(READY_POLL_S)
        print(f"fuseinfer serve: {name} ready on http://{args.host}:{port}", file=sys.stderr,
              flush=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        ready = asyncio.create_task(announce_ready())
        await server.serve(sockets=[sock])
        ready.cancel()

    try:
        asyncio.run(serve())
    finally:
        sock.close()
        inbox.put(Stop())
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    return client.exit_code
