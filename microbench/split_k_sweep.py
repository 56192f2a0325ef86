"""Few-token matmuls through split_k (developer tool, not a benchmark of record): the plain
kernel, its prologues fused, the prologues as their own kernels, cuBLAS, and optional
variant kernel files, all at the `linear` table's rule for each M.

    python microbench/split_k_sweep.py [--model qwen3-8b] [--tokens 2 4 8 16]
        [--variant NAME=path/to/small_m_matmul.py ...] [--json F]

Per projection and M (µs, % of copy bandwidth on the weight bytes; CUDA-graph replay,
weights rotated past L2): cuBLAS; split_k plain; with the prologue the decoder gives the
projection (qkv and gate_up: add + RMSNorm, down: SiLU * up) fused into split_k, and as
its own kernel before the plain split_k. A variant file defines small_m_matmul_kernel
with the same parameters; its plain and fused columns run the same launches through it
(the module attribute is swapped for the call), each fused result checked against the
reference. Then one decoder layer's four matmuls back to back, fused and unfused.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from typing import Any

import torch

import fuseinfer.triton.small_m_matmul as kernel_module
from fuseinfer.bench.ceilings import copy_bandwidth_gbps
from fuseinfer.bench.report import bench_environment, write_run_json
from fuseinfer.bench.suites.linear import shapes
from fuseinfer.bench.timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from fuseinfer.ops.activation.silu_and_mul import silu_and_mul
from fuseinfer.ops.linear.dispatch import effective
from fuseinfer.ops.linear.small_batch_linear import (
    launch_small_m_matmul,
    reference_small_batch_linear,
)
from fuseinfer.ops.norm.rmsnorm import fused_add_rmsnorm

PROLOGUE = {"qkv": "add_norm", "gate_up": "add_norm", "down": "silu", "o": None}
BASE = kernel_module.small_m_matmul_kernel


def load_variant(path: str):
    spec = importlib.util.spec_from_file_location(f"variant_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.small_m_matmul_kernel


def through(kernel, fn: Callable[[int], None]) -> Callable[[int], None]:
    """fn with small_m_matmul_kernel swapped for `kernel` while it launches."""
    def call(i: int) -> None:
        kernel_module.small_m_matmul_kernel = kernel
        try:
            fn(i)
        finally:
            kernel_module.small_m_matmul_kernel = BASE
    return call


class Projection:
    """One projection's rotated weights and inputs at M tokens, and its launches."""

    def __init__(self, proj: str, n: int, k: int, m: int, l2: int) -> None:
        self.proj, self.n, self.k, self.m = proj, n, k, m
        self.pro = PROLOGUE[proj]
        sets = buffer_sets(n * k * 2, l2)
        bf = dict(device="cuda", dtype=torch.bfloat16)
        self.ws = [torch.randn(n, k, **bf) / k ** 0.5 for _ in range(sets)]
        xk = 2 * k if self.pro == "silu" else k
        self.xs = [torch.randn(m, xk, **bf) for _ in self.ws]
        self.res = [torch.randn(m, k, **bf) for _ in self.ws]
        self.res_out = [torch.empty(m, k, **bf) for _ in self.ws]
        self.nw = torch.rand(k, **bf) + 0.5
        self.outs = [torch.empty(m, n, **bf) for _ in self.ws]
        self.rule = effective().rule(m, n, k)

    def kw(self, i: int) -> dict[str, Any]:
        if self.pro == "silu":
            return dict(silu_mul=True)
        if self.pro == "add_norm":
            return dict(norm_weight=self.nw, residual=self.res[i], residual_out=self.res_out[i])
        return {}

    def plain_x(self, i: int) -> torch.Tensor:
        return self.xs[i][:, :self.k] if self.pro == "silu" else self.xs[i]

    def cublas(self, i: int) -> None:
        torch.mm(self.plain_x(i), self.ws[i].t(), out=self.outs[i])

    def plain(self, i: int) -> None:
        launch_small_m_matmul(self.outs[i], self.plain_x(i), self.ws[i], self.rule, True)

    def fused(self, i: int) -> None:
        launch_small_m_matmul(self.outs[i], self.xs[i], self.ws[i], self.rule, True,
                              **self.kw(i))

    def unfused(self, i: int) -> None:
        h = self.xs[i]
        if self.pro == "silu":
            h = silu_and_mul(h, enable_pdl=True)
        elif self.pro == "add_norm":  # in place, as the decoder runs it
            fused_add_rmsnorm(h, self.res_out[i], self.nw, 1e-6, enable_pdl=True)
        launch_small_m_matmul(self.outs[i], h, self.ws[i], self.rule, True)

    def fused_error(self, kernel) -> float:
        self.outs[0].fill_(float("nan"))
        through(kernel, self.fused)(0)
        kw = self.kw(0)
        want = reference_small_batch_linear(self.xs[0], self.ws[0], self.pro == "silu",
                                            kw.get("norm_weight"), kw.get("residual"))[0]
        return ((self.outs[0].float() - want).norm() / want.norm()).item()


def sweep(m: int, variants: dict[str, Any], config: TimingConfig, l2: int, copy: float,
          model: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The rows of every projection at M = m, and the layer timings."""
    projs = [Projection(s.proj, s.n, s.k, m, l2) for s in shapes([model])
             if s.proj in PROLOGUE]
    rows: list[dict[str, Any]] = []
    for p in projs:
        sets = range(len(p.ws))

        def t(fn, sets=sets) -> float:
            return time_calls([lambda i=i: fn(i) for i in sets], config).median_us

        row: dict[str, Any] = {"proj": p.proj, "m": m, "n": p.n, "k": p.k,
                               "prologue": p.pro, "split": p.rule.split_k(p.n, p.k)[0],
                               "cublas_us": t(p.cublas), "unfused_us": t(p.unfused)}
        for name, kernel in variants.items():
            row[f"{name}_plain_us"] = t(through(kernel, p.plain))
            if p.pro is not None:
                row[f"{name}_fused_us"] = t(through(kernel, p.fused))
                row[f"{name}_err"] = p.fused_error(kernel)
        nbytes = p.n * p.k * 2
        for key in [c for c in row if c.endswith("_us")]:
            row[key.replace("_us", "_pct")] = 100 * nbytes / row[key] / 1e3 / copy
        print(" ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}"
                       for a, b in row.items() if not a.endswith("_pct")), flush=True)
        rows.append(row)
    count = max(len(p.ws) for p in projs)
    layers: dict[str, float] = {}
    for name, kernel in variants.items():
        for mode in ("fused", "unfused", "plain"):
            def layer(i: int, mode=mode) -> None:
                for p in projs:
                    fn = p.plain if mode == "plain" or p.pro is None else getattr(p, mode)
                    fn(i % len(p.ws))
            key = f"m{m}_{name}_{mode}"
            layers[key] = time_calls([lambda i=i, k=kernel, f=layer: through(k, f)(i)
                                      for i in range(count)], config).median_us
            print(f"layer {key}: {layers[key]:.1f} us", flush=True)
    return rows, layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--variant", nargs="*", default=[], help="NAME=path")
    ap.add_argument("--json")
    args = ap.parse_args()
    copy = copy_bandwidth_gbps()
    config = TimingConfig(repeats=15, target_graph_ms=2.0)
    l2 = l2_cache_bytes()
    variants = {"base": BASE}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        variants[name] = load_variant(path)
    rows: list[dict[str, Any]] = []
    layers: dict[str, float] = {}
    for m in args.tokens:
        r, lay = sweep(m, variants, config, l2, copy, args.model)
        rows += r
        layers.update(lay)
        torch.cuda.empty_cache()
    if args.json:
        write_run_json(args.json, "split_k_sweep", bench_environment(), None, rows,
                       {"copy_gbps": copy, "model": args.model, "layer_us": layers})


if __name__ == "__main__":
    main()
