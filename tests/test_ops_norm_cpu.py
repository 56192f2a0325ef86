"""Norm ops on the CPU (rmsnorm, its Gemma and fused residual-add variants, qk_rmsnorm):
schemas, the ops and references against float64 math written here, checks, fake impls,
and the qk_rmsnorm Triton kernel run by Triton's interpreter against its reference."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import fuseinfer
from fuseinfer.ops import qk_rmsnorm
from fuseinfer.ops.norm.qk_rmsnorm import launch_qk_rmsnorm, reference_qk_rmsnorm
from fuseinfer.ops.norm.rmsnorm import reference_rmsnorm

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

OPS = ["rmsnorm", "gemma_rmsnorm", "fused_add_rmsnorm", "gemma_fused_add_rmsnorm"]
EPS = 1e-6
REL = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6}


def float64_norm(x, w, offset):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * (w.double() + offset)


def rel_err(got, want):
    assert not torch.isnan(got).any()
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("op", OPS)
def test_schema_registered(op):
    schema = str(getattr(torch.ops.fuseinfer, op).default._schema)
    assert "bool? enable_pdl=None" in schema
    assert "Tensor(a!)" in schema
    if "fused" in op:
        assert "Tensor(b!) residual" in schema


def test_import_compiles_nothing(tmp_path):
    """A fresh process imports fuseinfer and runs a CPU op without invoking nvcc."""
    import os
    import subprocess
    import sys

    marker = tmp_path / "nvcc_was_called"
    fake_nvcc = tmp_path / "nvcc"
    fake_nvcc.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake_nvcc.chmod(0o755)
    env = dict(os.environ, FUSEINFER_NVCC=str(fake_nvcc),
               FUSEINFER_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(sys.path))
    code = ("import torch, fuseinfer; x = torch.randn(2, 8); "
            "fuseinfer.ops.rmsnorm(x, torch.ones(8)); "
            "assert fuseinfer.jit.loaded_modules() == {}; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    assert not marker.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hidden", [1024, 2880, 5120, 7168, 1000, 33])
@pytest.mark.parametrize("op", ["rmsnorm", "gemma_rmsnorm"])
def test_rmsnorm_cpu_matches_float64(op, hidden, dtype):
    x = torch.randn(5, hidden, dtype=dtype)
    w = torch.randn(hidden, dtype=dtype)
    out = torch.full_like(x, float("nan"))
    getattr(torch.ops.fuseinfer, op)(out, x, w, EPS, None)
    assert rel_err(out, float64_norm(x, w, 1.0 if "gemma" in op else 0.0)) < REL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("op", ["fused_add_rmsnorm", "gemma_fused_add_rmsnorm"])
def test_fused_add_cpu_matches_float64(op, dtype):
    x = torch.randn(9, 2880, dtype=dtype)
    r = torch.randn_like(x)
    w = torch.randn(2880, dtype=dtype)
    summed = (x.double() + r.double()).to(dtype)
    want = float64_norm(summed, w, 1.0 if "gemma" in op else 0.0)
    getattr(torch.ops.fuseinfer, op)(x, r, w, EPS, None)
    assert torch.equal(r, summed)
    assert rel_err(x, want) < REL[dtype]


def test_strided_rows_cpu():
    buf = torch.randn(6, 4100, dtype=torch.bfloat16)
    x = buf[:, :4096]
    w = torch.randn(4096, dtype=torch.bfloat16)
    out_buf = torch.full((6, 5000), float("nan"), dtype=torch.bfloat16)
    fuseinfer.ops.rmsnorm(x, w, EPS, out=out_buf[:, 10:4106])
    assert rel_err(out_buf[:, 10:4106], float64_norm(x, w, 0.0)) < 8e-3
    assert torch.isnan(out_buf[:, :10]).all() and torch.isnan(out_buf[:, 4106:]).all()


def test_reference_is_float32_math():
    x = torch.randn(3, 64, dtype=torch.float64)
    w = torch.randn(64, dtype=torch.float64)
    assert reference_rmsnorm(x, w, EPS).dtype == torch.float64
    assert reference_rmsnorm(x.bfloat16(), w.bfloat16(), EPS).dtype == torch.float32


def _bad_cases():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    w = torch.randn(64, dtype=torch.bfloat16)
    out = torch.empty_like(x)
    return {
        "weight dtype": ((out, x, w.float()), r"weight must have dtype torch.bfloat16"),
        "weight length": ((out, x, w[:32]), r"weight must have shape \[64\]"),
        "weight 2-D": ((out, x, w.view(8, 8)), r"weight must have shape"),
        "out shape": ((out[:2], x, w), r"out must have shape \[4, 64\]"),
        "out dtype": ((out.half(), x, w), r"out must have dtype"),
        "last dim": ((out, x.t().contiguous().t(), w), r"input must be contiguous in its last"),
        "input int": ((out, x.int(), w), r"input must be bfloat16, float16 or float32"),
        "overlapping rows": ((out, x.as_strided((4, 64), (16, 1)), w), r"must not overlap"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_names_argument(case):
    args, pattern = _bad_cases()[case]
    with pytest.raises(ValueError, match=pattern):
        torch.ops.fuseinfer.rmsnorm(*args, EPS, None)


def test_fused_bad_residual():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    w = torch.randn(64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"residual must have shape"):
        fuseinfer.ops.fused_add_rmsnorm(x, torch.randn(4, 32, dtype=torch.bfloat16), w)
    with pytest.raises(ValueError, match=r"eps must be >= 0"):
        fuseinfer.ops.fused_add_rmsnorm(x, x.clone(), w, eps=-1.0)


def test_fake_impl_under_torch_compile_fullgraph():
    w = torch.randn(128, dtype=torch.bfloat16)

    def layer(h, res):
        fuseinfer.ops.fused_add_rmsnorm(h, res, w, EPS)
        y = fuseinfer.ops.rmsnorm(h, w, EPS)
        return fuseinfer.ops.gemma_rmsnorm(y * 2, w, EPS), res

    h = torch.randn(4, 128, dtype=torch.bfloat16)
    r = torch.randn_like(h)
    want = layer(h.clone(), r.clone())
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(h.clone(), r.clone())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fake_impl_checks_and_shapes():
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="meta")
    w = torch.empty(64, dtype=torch.bfloat16, device="meta")
    assert fuseinfer.ops.rmsnorm(x, w).shape == (4, 64)
    with pytest.raises(ValueError, match="weight must have shape"):
        fuseinfer.ops.rmsnorm(x, w[:8])
    with pytest.raises(ValueError, match="residual must have dtype"):
        fuseinfer.ops.fused_add_rmsnorm(x, x.float(), w)


def test_no_cuda_kernel_before_first_use():
    from fuseinfer.ops.library import has_cuda_kernel

    assert not has_cuda_kernel("rmsnorm")


def test_overlapping_tensors_are_rejected():
    buf = torch.randn(5, 64, dtype=torch.bfloat16)
    w = torch.randn(64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="out must not overlap input"):
        fuseinfer.ops.rmsnorm(buf[:4], w, out=buf[1:5])
    with pytest.raises(ValueError, match="residual must not overlap input"):
        fuseinfer.ops.fused_add_rmsnorm(buf[:4], buf[1:5], w)
    x = buf[:4].clone()
    with pytest.raises(ValueError, match="weight must not overlap out"):
        fuseinfer.ops.rmsnorm(x, x[0], out=x)


def test_in_place_rmsnorm_is_allowed():
    x = torch.randn(4, 64, dtype=torch.float32)
    w = torch.randn(64, dtype=torch.float32)
    want = float64_norm(x, w, 0.0)
    fuseinfer.ops.rmsnorm(x, w, out=x)
    assert rel_err(x, want) < 1e-6


# ---- qk_rmsnorm ------------------------------------------------------------------------------

def _qk_case(tokens=3, hq=4, hk=2, d=16, dtype=torch.float32):
    qkv = torch.randn(tokens, (hq + 2 * hk) * d).to(dtype)
    wq, wk = (torch.randn(d) * 0.5 + 1).to(dtype), (torch.randn(d) * 0.5 + 1).to(dtype)
    return qkv, wq, wk


def float64_qk_norm(qk, wq, wk, num_q_heads):
    """Each head_dim slice of each row normalized in float64, q_weight for the first
    num_q_heads heads and k_weight for the rest."""
    heads = qk.double().reshape(qk.size(0), -1, wq.numel())
    out = torch.cat([float64_norm(heads[:, :num_q_heads], wq, 0.0),
                     float64_norm(heads[:, num_q_heads:], wk, 0.0)], dim=1)
    return out.reshape(qk.shape)


def test_qk_rmsnorm_reference_matches_per_head_rmsnorm():
    qkv, wq, wk = _qk_case()
    q, k = qkv[:, :64].reshape(3, 4, 16), qkv[:, 64:96].reshape(3, 2, 16)
    want_q = F.rms_norm(q.double(), (16,), wq.double(), 1e-6)
    want_k = F.rms_norm(k.double(), (16,), wk.double(), 1e-6)
    got = reference_qk_rmsnorm(qkv[:, :96], wq, wk, 4, 1e-6).view(3, 6, 16).double()
    torch.testing.assert_close(got[:, :4], want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 4:], want_k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_qk_rmsnorm_op_in_place_on_a_strided_view(dtype):
    qkv, wq, wk = _qk_case(dtype=dtype)
    v_before = qkv[:, 96:].clone()
    want = float64_qk_norm(qkv[:, :96], wq, wk, 4)
    qk_rmsnorm(qkv[:, :96], wq, wk, 4)
    assert rel_err(qkv[:, :96], want) < REL[dtype]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(qkv[:, :96].double(), want, rtol=tol, atol=tol)
    assert torch.equal(qkv[:, 96:], v_before)  # the v columns are untouched


@pytest.mark.parametrize("bad, match", [
    (dict(num_q_heads=6), "num_q_heads must be in"),
    (dict(num_q_heads=0), "num_q_heads must be in"),
    (dict(k_weight=torch.ones(8)), "must be the same 1-D"),
    (dict(qk=torch.randn(3, 90)), "qk must be"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(q_weight=torch.ones(16, dtype=torch.float16), k_weight=torch.ones(16,
          dtype=torch.float16)), "must have qk's dtype"),
])
def test_qk_rmsnorm_errors(bad, match):
    qkv, wq, wk = _qk_case()
    args = dict(qk=qkv[:, :96], q_weight=wq, k_weight=wk, num_q_heads=4, eps=1e-6) | bad
    with pytest.raises(ValueError, match=match):
        qk_rmsnorm(**args)


def test_qk_rmsnorm_meta():
    """The fake impl checks the arguments and returns nothing; qk is the one argument
    the schema marks written, so tracing sees the in-place update."""
    qk = torch.empty(2, 96, device="meta", dtype=torch.bfloat16)
    w = torch.empty(16, device="meta", dtype=torch.bfloat16)
    assert torch.ops.fuseinfer.qk_rmsnorm(qk, w, w, 4) is None
    assert qk.shape == (2, 96) and qk.dtype == torch.bfloat16 and qk.device.type == "meta"
    with pytest.raises(ValueError, match="num_q_heads must be in"):
        qk_rmsnorm(qk, w, w, 6)
    with pytest.raises(ValueError, match="must have qk's dtype"):
        qk_rmsnorm(qk, w.float(), w.float(), 4)
    schema = torch.ops.fuseinfer.qk_rmsnorm.default._schema
    written = [a.name for a in schema.arguments
               if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["qk"] and len(schema.returns) == 0


def test_qk_rmsnorm_under_torch_compile_fullgraph():
    """Traced through the fake impl, the in-place update of a view of qkv reaches qkv."""
    _, wq, wk = _qk_case(dtype=torch.bfloat16)

    def attention_prologue(qkv):
        qk_rmsnorm(qkv[:, :96], wq, wk, 4)
        return qkv[:, :64] * 2

    qkv = _qk_case(dtype=torch.bfloat16)[0]
    want_qkv, got_qkv = qkv.clone(), qkv.clone()
    want = attention_prologue(want_qkv)
    got = torch.compile(attention_prologue, fullgraph=True, backend="aot_eager")(got_qkv)
    assert torch.equal(got, want) and torch.equal(got_qkv, want_qkv)
    assert not torch.equal(got_qkv, qkv)


@needs_interpreter
@pytest.mark.parametrize("hq, hk, d", [(4, 2, 16), (16, 8, 32), (2, 1, 64)])
def test_qk_rmsnorm_kernel_interpreted(hq, hk, d):
    qkv, wq, wk = _qk_case(tokens=3, hq=hq, hk=hk, d=d)
    width = (hq + hk) * d
    v_before = qkv[:, width:].clone()
    want = reference_qk_rmsnorm(qkv[:, :width], wq, wk, hq, 1e-6)
    launch_qk_rmsnorm(qkv[:, :width], wq, wk, hq, 1e-6, pdl=False)
    torch.testing.assert_close(qkv[:, :width], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(qkv[:, width:], v_before)


def test_qk_rmsnorm_zero_tokens_is_a_no_op():
    qkv, wq, wk = _qk_case(tokens=0)
    qk_rmsnorm(qkv[:, :96], wq, wk, 4)
    assert qkv.shape == (0, 128)
    assert reference_qk_rmsnorm(qkv[:, :96], wq, wk, 4, 1e-6).shape == (0, 96)
    with pytest.raises(ValueError, match="num_q_heads must be in"):
        qk_rmsnorm(qkv[:, :96], wq, wk, 6)  # 0 tokens still checks the arguments
