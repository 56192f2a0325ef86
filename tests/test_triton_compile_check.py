"""fuseinfer.jit.triton_compile_check: interpreted launches described as Triton signatures,
and compiled for sm_90a in a process without the interpreter, where a kernel the
interpreter runs happily but Triton cannot compile fails the check."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import triton.language as tl

from fuseinfer.jit.triton_compile_check import Launch, describe

REPO = Path(__file__).resolve().parents[1]


def _toy(X, Out, n, scale, flag, BLOCK: tl.constexpr, MODE: tl.constexpr = 2):
    """A stand-in kernel signature (never run)."""


def test_describe_maps_arguments_to_triton_types():
    x = torch.zeros(4, dtype=torch.bfloat16)
    out = torch.zeros(4, dtype=torch.float8_e4m3fn)
    launch = describe(_toy, (x, out, 3, 0.5, None), {"BLOCK": 64, "num_warps": 8,
                                                     "launch_pdl": True})
    assert launch is not None
    assert dict(launch.signature) == {"X": "*bf16", "Out": "*fp8e4nv", "n": "i32",
                                      "scale": "fp32", "flag": "constexpr",
                                      "BLOCK": "constexpr", "MODE": "constexpr"}
    assert dict(launch.constexprs) == {"flag": None, "BLOCK": 64, "MODE": 2}
    assert dict(launch.options) == {"num_warps": 8}
    assert launch.divisible == ("X", "Out")  # fresh tensors are aligned; n = 3 is not
    offset = describe(_toy, (x[1:], out, 32, 0.5, None), {"BLOCK": 16})
    assert offset.divisible == ("Out", "n")  # x[1:] starts 2 bytes in
    big = describe(_toy, (x, out, 1 << 40, 1.0, True), {"BLOCK": 16})
    assert dict(big.signature)["n"] == "i64" and dict(big.signature)["flag"] == "i1"
    assert describe(_toy, (x, out, object(), 1.0, None), {"BLOCK": 16}) is None


KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def good(X, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < N) * 2, mask=offs < N)


@triton.jit
def retyped(X, N, BLOCK: tl.constexpr):
    first = N // 2
    offs = tl.arange(0, BLOCK)
    if N > 4:
        first = offs.to(tl.int64)  # a scalar rebound to a tensor: the interpreter runs it
    tl.store(X + offs, tl.load(X + offs) + first, mask=offs < N)


@triton.jit
def interpreter_only_branch(X, N, BLOCK: tl.constexpr, DOT_F32: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    if DOT_F32:  # recorded True by the interpreter, compiled as a GPU launch sets it
        tl.static_assert(BLOCK < 0, "the check compiled the interpreter's branch")
    tl.store(X + offs, tl.load(X + offs, mask=offs < N) * 2, mask=offs < N)
'''


@pytest.mark.skipif(sys.platform != "linux", reason="Triton's NVIDIA backend: Linux")
def test_the_check_compiles_good_kernels_and_reports_bad_ones(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    (tmp_path / "toy_kernels.py").write_text(textwrap.dedent(KERNELS))
    sig = (("X", "*fp32"), ("N", "i32"), ("BLOCK", "constexpr"))
    launches = [Launch("toy_kernels", name, sig, (("BLOCK", 16),), (("num_warps", 4),),
                       ("X", "N")) for name in ("good", "retyped")]
    launches.append(Launch("toy_kernels", "interpreter_only_branch",
                           sig + (("DOT_F32", "constexpr"),),
                           (("BLOCK", 16), ("DOT_F32", True)), (("num_warps", 4),)))
    log = tmp_path / "launches.pkl"
    log.write_bytes(pickle.dumps(launches))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO / "python"),
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "fuseinfer.jit.triton_compile_check",
                           str(log)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED toy_kernels.retyped" in done.stderr
    assert "toy_kernels.good" not in done.stderr
    assert "interpreter_only_branch" not in done.stderr
    assert "2 of 3 launches of 3 kernels compiled" in done.stdout
