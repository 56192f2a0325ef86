"""A user's mistake on `fuseinfer generate` and `fuseinfer serve` is one line on stderr and
exit status 2, never a traceback; serve says "ready" only once /health answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "python"), CUDA_VISIBLE_DEVICES="",
                FUSEINFER_CACHE_DIR=str(cache))


def run_cli(cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fuseinfer.cli", *args], env=_env(cache),
                          capture_output=True, text=True, timeout=240)


def assert_usage_error(proc: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fuseinfer {command}: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_missing_model_folder(cache, tmp_path, command):
    missing = tmp_path / f"model-{os.urandom(4).hex()}"
    extra = ("--prompt", "hi") if command == "generate" else ("--port", "0")
    proc = run_cli(cache, command, "--model", str(missing), *extra)
    assert_usage_error(proc, command, str(missing), "no such model folder")


def test_folder_without_config(cache, tmp_path):
    proc = run_cli(cache, "generate", "--model", str(tmp_path), "--prompt", "hi")
    assert_usage_error(proc, "generate", "no config.json")


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_config_only_model_needs_dummy_weights(cache, command):
    extra = ("--prompt", "hi") if command == "generate" else ("--port", "0")
    proc = run_cli(cache, command, "--model", "qwen3-0.6b", *extra)
    assert_usage_error(proc, command, "config-only", "--load-format dummy")


@pytest.mark.parametrize("command,device", [("generate", "cuda"), ("serve", "cuda:1")])
def test_cuda_device_without_cuda(cache, command, device):
    extra = ("--prompt", "hi") if command == "generate" else ("--port", "0")
    proc = run_cli(cache, command, "--device", device, *extra)
    assert_usage_error(proc, command, f"--device {device}", "no CUDA GPU")


def test_bad_engine_option(cache):
    proc = run_cli(cache, "serve", "--page-size", "0", "--port", "0")
    assert_usage_error(proc, "serve", "page_size")


def test_empty_prompt(cache):
    proc = run_cli(cache, "generate", "--prompt", "hello", "--prompt", "")
    assert_usage_error(proc, "generate", "--prompt is empty")


def test_prompt_longer_than_the_context(cache):
    words = " ".join(os.urandom(2).hex() for _ in range(3000))
    proc = run_cli(cache, "generate", "--device", "cpu", "--prompt", words)
    assert_usage_error(proc, "generate", "exceeds the context limit")


def test_serve_on_a_busy_port(cache):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        proc = run_cli(cache, "serve", "--device", "cpu", "--port", str(port))
        took = time.monotonic() - start
    assert_usage_error(proc, "serve", f"127.0.0.1:{port}", "in use")
    assert took < 60  # it fails before loading an engine


def _status(url: str, key: str | None = None, body: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("flag", ["--api-key", "--max-request-bytes"])
def test_serve_refuses_an_empty_key_or_no_byte_limit(cache, flag):
    value = "" if flag == "--api-key" else "0"
    proc = run_cli(cache, "serve", "--device", "cpu", "--port", "0", flag, value)
    assert_usage_error(proc, "serve", flag)


def test_serve_says_ready_only_when_it_answers(cache):
    """Also: --seed, --api-key and --max-request-bytes reach the server."""
    key, seed = os.urandom(6).hex(), str(int.from_bytes(os.urandom(3), "little"))
    proc = subprocess.Popen([sys.executable, "-m", "fuseinfer.cli", "serve", "--device", "cpu",
                             "--port", "0", "--page-size", "4", "--seed", seed, "--api-key",
                             key, "--max-request-bytes", "2000"], env=_env(cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "ready on http://" in line:
                url = line.strip().rsplit(" ", 1)[-1]
                # no retry: the first request after "ready" must succeed
                assert _status(url + "/health") == 200
                assert _status(url + "/v1/models") == 401
                assert _status(url + "/v1/models", key) == 200
                big = json.dumps({"prompt": "x" * 3000, "max_tokens": 1}).encode()
                assert _status(url + "/v1/completions", key, big) == 413
                small = json.dumps({"prompt": [5, 6, 7], "max_tokens": 2}).encode()
                assert _status(url + "/v1/completions", key, small) == 200
                break
        else:
            pytest.fail(f"no ready line in 180 s: {lines}")
        assert any("ready on http://127.0.0.1:" in x for x in lines), lines
        assert any(f"(engine seed {seed})" in x for x in lines), lines
    finally:
        proc.terminate()
        proc.wait(timeout=60)
