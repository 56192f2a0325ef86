"""The `fuseinfer` command on a machine with no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "fuseinfer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_info_without_gpu():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    assert "device: no CUDA GPU visible" in proc.stdout
    assert "norm:" in proc.stdout and "build cache:" in proc.stdout
    assert "ninja:" in proc.stdout


def test_info_json():
    proc = run_cli("info", "--json")
    report = json.loads(proc.stdout)
    assert report["device"] is None
    assert report["ops"]["norm"]["table"] == "builtin"
    assert report["modules"] == sorted(p.parent.name for p in REPO.glob("csrc/*/module.json"))
    assert {"norm", "rope", "kvcache"} <= set(report["modules"])
    assert set(report["toolkit"]) == {"torch CUDA", "nvcc", "ninja", "cutlass"}


@pytest.mark.parametrize("args", [("bench", "--help"), ("bench", "norm", "--help"),
                                  ("bench", "ceilings", "--help"), ("tune", "--help"),
                                  ("tune", "norm", "--help")])
def test_help(args):
    proc = run_cli(*args)
    assert proc.returncode == 0 and "usage: fuseinfer" in proc.stdout


@pytest.mark.parametrize("args", [("bench", "norm"), ("tune", "norm"), ("bench", "ceilings")])
def test_gpu_only_commands_say_so_in_one_line(args):
    """The real check, in a process that sees no GPU (the in-process tests of every suite
    in test_bench_registry.py stub it)."""
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"fuseinfer {' '.join(args)}: no CUDA GPU found, and "
                                        "this command needs one."]
    assert proc.stdout == ""


def test_bench_without_a_suite_is_a_usage_error():
    proc = run_cli("bench")
    assert proc.returncode == 2 and "choose a suite (or --list)" in proc.stderr


def test_norm_options_are_checked(monkeypatch):
    from fuseinfer.bench import cli as bench_cli
    from fuseinfer.cli import main

    monkeypatch.setattr(bench_cli, "has_cuda_gpu", lambda: True)
    with pytest.raises(SystemExit, match=r"unknown op\(s\) \['layernorm'\]"):
        main(["bench", "norm", "--ops", "layernorm"])
    with pytest.raises(SystemExit, match="no shapes left"):
        main(["bench", "norm", "--hidden", "7"])


def test_bad_shape_is_reported():
    from fuseinfer.bench.suites.norm import parse_shapes

    assert parse_shapes(["512x4096"])[0].hidden == 4096
    with pytest.raises(ValueError, match="expected TOKENSxHIDDEN"):
        parse_shapes(["4096"])


def _generate(cache: Path, *extra: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), CUDA_VISIBLE_DEVICES="",
               FUSEINFER_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-m", "fuseinfer.cli", "generate", "--device", "cpu",
                           "--prompt", "the sky is", "--max-new-tokens", "12",
                           "--temperature", "1.0", "--ignore-eos", *extra], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_generate_on_two_ranks_samples_what_one_rank_does(tmp_path):
    """--tp 2 on the CPU: rank 0 in the command's process, rank 1 spawned (gloo); seeded
    sampling at temperature 1 lands on the same 12 tokens (the gathered logits agree)."""
    seed = str(int.from_bytes(os.urandom(3), "little"))
    assert _generate(tmp_path, "--seed", seed, "--tp", "2") == \
        _generate(tmp_path, "--seed", seed)


def test_generate_under_torchrun_prints_once_what_one_rank_does(tmp_path):
    """torchrun starts both ranks running the same command: rank 1 follows inside the
    Engine and exits 0, rank 0 prints."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed = str(int.from_bytes(os.urandom(3), "little"))
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), CUDA_VISIBLE_DEVICES="",
               FUSEINFER_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           "2", "--master-port", str(port), "-m", "fuseinfer.cli", "generate",
                           "--device", "cpu", "--prompt", "the sky is", "--max-new-tokens",
                           "12", "--temperature", "1.0", "--ignore-eos", "--seed", seed,
                           "--tp", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _generate(tmp_path, "--seed", seed)


def test_generate_unseeded_differs_across_runs_and_seeded_repeats(tmp_path):
    seed = str(int.from_bytes(os.urandom(3), "little"))
    assert _generate(tmp_path, "--seed", seed) == _generate(tmp_path, "--seed", seed)
    # 12 tokens sampled at temperature 1 from the tiny model: equal by chance ~never
    assert _generate(tmp_path) != _generate(tmp_path)


def test_serve_notes_whether_the_seed_was_given():
    from fuseinfer.cli import build_parser
    from fuseinfer.runtime.engine_args import EngineArgs

    parser = build_parser()
    default = parser.parse_args(["serve"])
    given = parser.parse_args(["serve", "--seed", "0"])
    assert default.seed == 0 == EngineArgs(model="m").seed and not default.seed_given
    assert given.seed == 0 and given.seed_given
    assert parser.parse_args(["serve", "--seed", "17"]).seed == 17
