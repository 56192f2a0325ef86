"""One-token matmuls on a model's projections (developer tool, not a benchmark of record):
the gemv's grid size and stages, its prologues fused or as their own kernels, cuBLAS.

    python microbench/gemv_sweep.py [--model qwen3-8b] [--programs 132 264 396 528]
        [--stages 2 3 4] [--old path/to/an/older/triton/small_batch_linear.py] [--json F]

Per projection at M = 1 (µs, % of copy bandwidth on the weight bytes; CUDA-graph replay,
weights rotated past L2): cuBLAS; the gemv at each grid size, stage count and first-tile
order; with its best tile, the projection with the prologue the decoder gives it (qkv and
gate_up: add + RMSNorm, down: SiLU * up) fused into the gemv and as its own kernel before
the plain gemv. Then one decoder layer's four matmuls back to back, each way, at each
projection's best tile and at the table's (`@table`, what the runtime runs). --old: the
same through an older gemv kernel file (one tile per program), for a same-run
before/after.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import torch

from fuseinfer.bench.ceilings import copy_bandwidth_gbps
from fuseinfer.bench.report import bench_environment, write_run_json
from fuseinfer.bench.suites.linear import shapes
from fuseinfer.bench.timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from fuseinfer.ops.activation.silu_and_mul import silu_and_mul
from fuseinfer.ops.linear.small_batch_linear import (
    _TILE_BYTES,
    launch_small_batch_linear,
    reference_small_batch_linear,
)
from fuseinfer.ops.norm.rmsnorm import fused_add_rmsnorm
from fuseinfer.ops.triton_launch import next_pow2

PROLOGUE = {"qkv": "add_norm", "gate_up": "add_norm", "down": "silu", "o": None,
            "lm_head": "add_norm"}


def old_launcher(path: str):
    spec = importlib.util.spec_from_file_location("old_gemv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def launch(out, x, w, silu_mul=False, norm_weight=None, residual=None, residual_out=None,
               eps=1e-6):  # the launch of the one-tile-per-program gemv
        m, n, k = x.size(0), w.size(0), w.size(1)
        k_pad = next_pow2(k)
        block_n = max(1, min(64, _TILE_BYTES // (k_pad * w.element_size())))
        norm = 0 if norm_weight is None else (1 if residual is None else 2)
        module.gemv_kernel[(-(-n // block_n),)](
            x, w, out, residual if residual is not None else x,
            norm_weight if norm_weight is not None else x,
            residual_out if residual_out is not None else out, m, n, k, x.stride(0),
            w.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
            residual_out.stride(0) if residual_out is not None else 0, eps,
            BLOCK_N=block_n, K_PAD=k_pad, M_MAX=8, SILU_MUL=silu_mul, NORM=norm,
            USE_PDL=True, num_warps=8, launch_pdl=True)
    return launch


def sweep(shape, programs: list[int], stages: list[int], old, config: TimingConfig, l2: int
          ) -> tuple[dict[str, Any], list]:
    """One projection's row and its (weights, inputs, ...) for the layer timing."""
    n, k = shape.n, shape.k
    nbytes = n * k * 2
    sets = buffer_sets(nbytes, l2)
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
          for _ in range(sets)]
    pro = PROLOGUE[shape.proj]
    xk = 2 * k if pro == "silu" else k
    xs = [torch.randn(1, xk, device="cuda", dtype=torch.bfloat16) for _ in ws]
    res = [torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for _ in ws]
    res_out = [torch.empty(1, k, device="cuda", dtype=torch.bfloat16) for _ in ws]
    nw = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
    outs = [torch.empty(1, n, device="cuda", dtype=torch.bfloat16) for _ in ws]
    sets_ = list(range(len(ws)))

    def t(fn) -> float:
        return time_calls([lambda i=i: fn(i) for i in sets_], config).median_us

    row: dict[str, Any] = {"proj": shape.proj, "n": n, "k": k, "prologue": pro}
    xp = [x[:, :k] if pro == "silu" else x for x in xs]  # plain: x as the matmul input
    row["cublas_us"] = t(lambda i: torch.mm(xp[i], ws[i].t(), out=outs[i]))
    grid = [(p, st, fl) for p in programs for st in stages for fl in (True, False)]
    for p, st, fl in grid:
        row[f"gemv_p{p}_s{st}{'_fl' if fl else ''}_us"] = t(
            lambda i, p=p, st=st, fl=fl: launch_small_batch_linear(
                outs[i], xp[i], ws[i], True, programs=p, stages=st, first_last=fl))
    best = min(grid, key=lambda g: row[f"gemv_p{g[0]}_s{g[1]}{'_fl' if g[2] else ''}_us"])
    row["best"] = best
    tile = dict(programs=best[0], stages=best[1], first_last=best[2])
    if old:
        row["old_gemv_us"] = t(lambda i: old(outs[i], xp[i], ws[i]))
    kw = {"silu": lambda i: dict(silu_mul=True),
          "add_norm": lambda i: dict(norm_weight=nw, residual=res[i],
                                     residual_out=res_out[i]),
          None: lambda i: {}}[pro]

    def fused(i):
        launch_small_batch_linear(outs[i], xs[i], ws[i], True, **tile, **kw(i))

    def unfused(i):
        if pro == "silu":
            h = silu_and_mul(xs[i], enable_pdl=True)
        elif pro == "add_norm":
            h = xs[i]  # in place, as the decoder runs it
            fused_add_rmsnorm(h, res_out[i], nw, 1e-6, enable_pdl=True)
        else:
            h = xs[i]
        launch_small_batch_linear(outs[i], h, ws[i], True, **tile)

    if pro is not None:
        row["fused_us"] = t(fused)
        row["unfused_us"] = t(unfused)
        if old:
            row["old_fused_us"] = t(lambda i: old(outs[i], xs[i], ws[i], **kw(i)))
        # the fused result against the reference
        outs[0].fill_(float("nan"))
        fused(0)
        want = reference_small_batch_linear(xs[0], ws[0], pro == "silu",
                                            nw if pro == "add_norm" else None,
                                            res[0] if pro == "add_norm" else None)[0]
        row["rel_err"] = ((outs[0].float() - want).norm() / want.norm()).item()
    return row, [ws, xs, outs, res, res_out, nw, kw, pro, tile]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--programs", type=int, nargs="+", default=[132, 264, 396, 528])
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--old")
    ap.add_argument("--json")
    args = ap.parse_args()
    copy = copy_bandwidth_gbps()
    config = TimingConfig(repeats=15, target_graph_ms=2.0)
    old = old_launcher(args.old) if args.old else None
    l2 = l2_cache_bytes()
    rows: list[dict[str, Any]] = []
    layer: dict[str, list] = {}
    for shape in shapes([args.model]):
        row, entry = sweep(shape, args.programs, args.stages, old, config, l2)
        nbytes = shape.n * shape.k * 2
        for key in [c for c in row if c.endswith("_us")]:
            row[key.replace("_us", "_pct")] = 100 * nbytes / row[key] / 1e3 / copy
        print(" ".join(f"{a}={b:.2f}" if isinstance(b, float) else f"{a}={b}"
                       for a, b in row.items() if not a.endswith("_pct")), flush=True)
        print("   % copy: " + " ".join(f"{a[:-4]}={b:.1f}" for a, b in row.items()
                                       if a.endswith("_pct")), flush=True)
        rows.append(row)
        if shape.proj != "lm_head":
            layer[shape.proj] = entry
    # one layer's four matmuls, back to back (the first set of each)
    def run_layer(mode: str, i: int) -> None:
        mode, _, grid = mode.partition("@")  # "@table": the table's tile, not the best
        for proj in ("qkv", "o", "gate_up", "down"):
            ws, xs, outs, res, res_out, nw, kw, pro, tile = layer[proj]
            tile = {} if grid == "table" else tile
            j = i % len(ws)
            x = xs[j] if mode != "plain" else (xs[j][:, :ws[j].size(1)])
            if mode == "fused" or pro is None:
                launch_small_batch_linear(outs[j], x, ws[j], True, **tile,
                                          **(kw(j) if mode == "fused" else {}))
            elif mode == "unfused":
                if pro == "silu":
                    h = silu_and_mul(x, enable_pdl=True)
                else:
                    h = x
                    fused_add_rmsnorm(h, res_out[j], nw, 1e-6, enable_pdl=True)
                launch_small_batch_linear(outs[j], h, ws[j], True, **tile)
            elif mode == "old_fused":
                old(outs[j], x, ws[j], **kw(j))
            else:
                launch_small_batch_linear(outs[j], x, ws[j], True, **tile)
    count = max(len(v[0]) for v in layer.values())
    summary = {}
    modes = ["plain", "fused", "unfused", "plain@table", "fused@table", "unfused@table"]
    for mode in modes + (["old_fused"] if old else []):
        summary[mode] = time_calls([lambda i=i, mode=mode: run_layer(mode, i)
                                    for i in range(count)], config).median_us
    lbytes = sum(v[0][0].numel() * 2 for v in layer.values())
    print("layer (qkv, o, gate_up, down): " + " ".join(
        f"{m}={us:.1f} us ({100 * lbytes / us / 1e3 / copy:.1f}% copy)"
        for m, us in summary.items()), flush=True)
    if args.json:
        write_run_json(args.json, "gemv_sweep", bench_environment(), None, rows,
                       {"copy_gbps": copy, "model": args.model, "layer_us": summary})


if __name__ == "__main__":
    main()
