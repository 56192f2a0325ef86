"""The grouped-GEMM rows of `fuseinfer bench moe` (op "grouped"): fp8_blockwise_grouped_mm
on a model's w13 shape (every expert [2I, H]) with the same number of rows per expert,
against torch._scaled_grouped_mm (fp8, rowwise scales: a cheaper scaling) and
torch._grouped_mm (bf16) on the same operands.

TFLOP/s counts 2 * E * rows_per_expert * 2I * H. Ours runs the configuration the `moe`
entry picks for R = E * rows_per_expert (or the one named). Before timing, each side is
checked against the float32 reference on its own scales, on the first and last expert's
rows; a mismatch or a failure is reported in the row, not timed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..ops.gemm.fp8_blockwise_mm import reference_fp8_blockwise_mm
from .flashinfer_baselines import describe
from .moe_baselines import MoeModel
from .timing import TimingConfig, time_calls

FP8 = torch.float8_e4m3fn
GROUPED_BASELINES = ("torch_fp8_row", "torch_bf16")
REL_ERR = 2e-2  # bf16 outputs of the same math differ by ~3e-3
PER_EXPERT = (16, 64, 256, 1024)


@dataclass
class GroupedCase:
    a_q: torch.Tensor  # [R, H] fp8
    a_scales: torch.Tensor  # [R, H/128] float32, K-major
    b_q: torch.Tensor  # [E, 2I, H] fp8
    b_scales: torch.Tensor  # [E, 2I/128, H/128] float32
    offsets: torch.Tensor  # int32 [E + 1]
    out: torch.Tensor  # [R, 2I] bf16

    @property
    def experts(self) -> int:
        return self.b_q.shape[0]


def make_case(model: MoeModel, per_expert: int, device: torch.device | str = "cuda"
              ) -> GroupedCase:
    e, n, k = model.experts, 2 * model.inter, model.hidden
    rows = e * per_expert
    scales = lambda *shape: (0.5 + torch.rand(*shape, device=device)) * 2.0**-4  # noqa: E731
    return GroupedCase(
        a_q=(4 * torch.randn(rows, k, device=device)).to(FP8),
        a_scales=scales(rows, k // 128),
        b_q=(4 * torch.randn(e, n, k, device=device)).to(FP8),
        b_scales=scales(e, -(-n // 128), k // 128),
        offsets=torch.arange(e + 1, dtype=torch.int32, device=device) * per_expert,
        out=torch.empty(rows, n, dtype=torch.bfloat16, device=device))


def _check_experts(case: GroupedCase, got: torch.Tensor, a_scales: torch.Tensor,
                   b_scales: torch.Tensor) -> float:
    """Worst relative error over the first and last expert's rows, against the reference
    on the given (possibly coarser) scales."""
    bounds = case.offsets.tolist()
    worst = 0.0
    for e in {0, case.experts - 1}:
        lo, hi = bounds[e], bounds[e + 1]
        want = reference_fp8_blockwise_mm(case.a_q[lo:hi], a_scales[lo:hi], case.b_q[e],
                                          b_scales[e])
        err = ((got[lo:hi].float() - want).norm() / want.norm()).item()
        worst = max(worst, err if err == err else float("inf"))
    return worst


def ours(case: GroupedCase, config: str | None, pdl: bool | None) -> Callable[[], Any]:
    from ..ops.moe.fp8_blockwise_grouped_mm import fp8_blockwise_grouped_mm

    return lambda: fp8_blockwise_grouped_mm(case.a_q, case.a_scales, case.b_q, case.b_scales,
                                            case.offsets, out=case.out, config=config,
                                            enable_pdl=pdl)


def torch_fp8_row(case: GroupedCase) -> tuple[Callable[[], torch.Tensor], float]:
    """torch._scaled_grouped_mm with one scale per row and per output channel (each row's
    first group; each 128-row weight block's first column), checked on those scales."""
    rows_scale = case.a_scales[:, 0].contiguous()
    n = case.b_q.shape[1]
    col_scale = case.b_scales[:, :, 0].repeat_interleave(128, dim=1)[:, :n].contiguous()
    b_t = case.b_q.transpose(1, 2)  # [E, K, N], column-major last two dims
    ends = case.offsets[1:]

    def call() -> torch.Tensor:
        return torch._scaled_grouped_mm(case.a_q, b_t, rows_scale, col_scale, offs=ends,
                                        out_dtype=torch.bfloat16)

    got = call()
    a_s = rows_scale[:, None].expand_as(case.a_scales)
    b_s = case.b_scales[:, :, :1].expand_as(case.b_scales)
    return call, _check_experts(case, got, a_s, b_s)


def torch_bf16(case: GroupedCase) -> tuple[Callable[[], torch.Tensor], float]:
    """torch._grouped_mm on bf16 copies of the dequantized operands."""
    n = case.b_q.shape[1]
    a = (case.a_q.float() * case.a_scales.repeat_interleave(128, dim=1)).to(torch.bfloat16)
    sb = case.b_scales.repeat_interleave(128, dim=1)[:, :n].repeat_interleave(128, dim=2)
    b_t = (case.b_q.float() * sb).to(torch.bfloat16).transpose(1, 2)
    del sb
    ends = case.offsets[1:]

    def call() -> torch.Tensor:
        return torch._grouped_mm(a, b_t, offs=ends)

    return call, _check_experts(case, call(), case.a_scales, case.b_scales)


def measure_grouped(model: MoeModel, per_expert: int, wanted: list[str], config: TimingConfig,
                    pdl: bool | None, gemm_config: str | None = None,
                    device: torch.device | str = "cuda") -> dict[str, Any]:
    from ..ops.moe.moe_dispatch import effective

    case = make_case(model, per_expert, device)
    rows, n, k = case.a_q.shape[0], case.b_q.shape[1], case.a_q.shape[1]
    index = torch.device(device).index if torch.device(device).type == "cuda" else None
    chosen = gemm_config or effective(index).cutlass_config(rows)
    row: dict[str, Any] = {
        "op": "fp8_blockwise_grouped_mm", "kind": "grouped", "model": model.name,
        "tokens": per_expert, "per_expert": per_expert, "quant": "fp8_block",
        "shape": f"w13 E={model.experts} N={n} K={k}", "config": chosen, "rows": rows}
    flops = 2 * rows * n * k
    try:
        call = ours(case, chosen, pdl)
        case.out.fill_(float("nan"))
        call()
        err = _check_experts(case, case.out, case.a_scales, case.b_scales)
        row["rel_err"] = err
        if not err <= REL_ERR:
            row["note"] = f"MISMATCH: rel err {err:.1e} > {REL_ERR:.0e}, not timed"
            return row
        timed = time_calls([call], config)
    except Exception as error:
        row["note"] = f"ours failed: {describe(error)}"
        return row
    row.update({"us": timed.median_us, "timing": timed.method,
                "tflops": flops / timed.median_us / 1e6})
    failed = []
    for name, prepare in (("torch_fp8_row", torch_fp8_row), ("torch_bf16", torch_bf16)):
        if name not in wanted:
            continue
        try:
            base, err = prepare(case)
            row[f"{name}_rel_err"] = err
            if not err <= REL_ERR:
                raise RuntimeError(f"disagrees with the reference: rel err {err:.1e}")
            us = time_calls([base], config).median_us
        except Exception as error:
            row[f"{name}_error"] = describe(error)
            failed.append(name)
            continue
        row[f"{name}_us"] = us
        row[f"{name}_tflops"] = flops / us / 1e6
        row[f"vs_{name}"] = us / row["us"]
    row["not_timed"] = ", ".join(failed) or None
    del case
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return row
