"""`fuseinfer serve`'s options: every engine option comes from EngineArgs (with the serving
GC settings on), next to the server's own; bad values stop it before an engine starts."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from fuseinfer.runtime.engine_args import SERVING_GC, EngineArgs, engine_args_from
from fuseinfer.server.cli import _run_serve, add_serve_parser


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_serve_has_every_engine_option_with_serving_defaults():
    args = _parse()
    for f in dataclasses.fields(EngineArgs):
        assert f.name == "model" or hasattr(args, f.name), f.name
    assert engine_args_from(args, model="m") == EngineArgs(model="m", **SERVING_GC)
    assert args.port == 30000 and args.host == "127.0.0.1"
    assert args.max_queued_requests is None and args.request_timeout is None


def test_serve_options_reach_engine_args():
    args = _parse("--page-size", "16", "--max-running-requests", "3", "--disable-cuda-graph",
                  "--no-gc-freeze", "--kv-cache-dtype", "fp8_e4m3", "--schedule-policy", "lpm",
                  "--port", "1234", "--max-queued-requests", "2", "--request-timeout", "1.5")
    got = engine_args_from(args, model="m")
    assert got == EngineArgs(model="m", page_size=16, max_running_requests=3,
                             disable_cuda_graph=True, gc_freeze=False,
                             gc_warning_threshold_secs=SERVING_GC["gc_warning_threshold_secs"],
                             kv_cache_dtype="fp8_e4m3", schedule_policy="lpm")
    assert (args.port, args.max_queued_requests, args.request_timeout) == (1234, 2, 1.5)


def test_serve_refuses_bad_engine_options():
    with pytest.raises(SystemExit):  # not one of the choices: argparse refuses it
        _parse("--kv-cache-dtype", "fp8")
    args = _parse("--model", "qwen3-0.6b", "--page-size", "0")  # a config-only bundled model
    with pytest.raises(SystemExit, match="page_size"):  # EngineArgs refuses it
        _run_serve(args)
