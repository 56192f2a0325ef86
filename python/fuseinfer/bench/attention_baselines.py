"""Baselines for `fuseinfer bench attention`: SDPA and flex on contiguous (unpaged) KV as
they take it; FlashInfer on the suite's own paged KV.

sdpa: torch.nn.functional.scaled_dot_product_attention, [batch, heads, len, dim] with
      enable_gqa; decode with a window reads the window's slice; causal prefill uses
      is_causal, extend an explicit bottom-right mask. SDPA has no sinks: those rows time
      it without them (it does less work than asked).
flex: torch flex_attention compiled, causal / window / prefix offset as a mask_mod; sinks
      emulated exactly from its lse: out * sigmoid(lse - sink).
flashinfer: its paged decode / causal prefill wrappers (flashinfer_baselines), planned
      outside timing over the same page table, queries and K/V caches as ours; timed only
      after its output agrees with ours on those inputs. Rows with sinks take its
      attention-sink variant: its plain fa2/fa3 kernels drop the sinks argument. Its own
      backend pick (FA3 on Hopper) where it builds, else FA2 (a trimmed install carries
      FA2 only): the row records flashinfer_backend, and a fallback in its note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import flashinfer_baselines
from .timing import TimingConfig, time_calls

_FLEX: dict[str, Any] = {}
FLEX_DECODE_BATCHES = (1, 64)  # flex compiles per shape: decode rows get it at these only


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                window_left: int | None) -> Callable[[], torch.Tensor]:
    """q [batch, hq, dim]; k, v [batch, hkv, len, dim]."""
    if window_left is not None and k.size(2) > window_left + 1:
        k, v = k[:, :, -(window_left + 1):], v[:, :, -(window_left + 1):]
    q4 = q.unsqueeze(2)
    return lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True)


def sdpa_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> Callable[[], torch.Tensor]:
    """q [batch, hq, q_len, dim]; k, v [batch, hkv, kv_len, dim]; causal, bottom-right."""
    q_len, kv_len = q.size(2), k.size(2)
    if q_len == kv_len:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rows = torch.arange(kv_len - q_len, kv_len, device=q.device)
    mask = torch.arange(kv_len, device=q.device)[None, :] <= rows[:, None]
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def _flex():
    if not _FLEX:
        import torch._dynamo.config as dynamo_config
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        # One compile per shape; past the recompile limit torch would silently fall back
        # to an unfused flex that materializes the scores: time that and the row lies.
        dynamo_config.recompile_limit = 1024
        dynamo_config.fail_on_recompile_limit_hit = True
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
        _FLEX["mask"] = create_block_mask
    return _FLEX["fn"], _FLEX["mask"]


def flex_attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        window_left: int | None, sinks: torch.Tensor | None
                        ) -> Callable[[], torch.Tensor]:
    """q [batch, hq, q_len, dim] (its rows are the last q_len positions); k, v
    [batch, hkv, kv_len, dim]."""
    flex, create_block_mask = _flex()
    q_len, kv_len = q.size(2), k.size(2)
    offset = kv_len - q_len

    def mask_mod(b, h, qi, kj):
        visible = kj <= qi + offset
        if window_left is not None:
            visible = visible & (kj >= qi + offset - window_left)
        return visible

    block_mask = create_block_mask(mask_mod, None, None, q_len, kv_len, device=q.device)
    if sinks is None:
        return lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    sink = sinks.float().view(1, -1, 1)

    def with_sinks() -> torch.Tensor:
        out, lse = flex(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
        return out * torch.sigmoid(lse - sink).unsqueeze(-1).to(out.dtype)

    return with_sinks


def contiguous_inputs(case: Any, dtype: torch.dtype, device: str = "cuda"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh q [batch, hq, q_len, dim] and k, v [batch, hkv, kv_len, dim] for a suite case
    (every request the same lengths)."""
    m = case.model
    b, n, ql = len(case.kv_lens), case.kv_lens[0], case.q_lens[0]
    k = torch.randn(b, m.kv_heads, n, m.head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    q = torch.randn(b, m.q_heads, ql, m.head_dim, device=device, dtype=dtype)
    return q, k, v


def _add_note(row: dict[str, Any], text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def installed(baselines: Sequence[str]) -> list[str]:
    """The baselines this machine can run (flashinfer only where it imports)."""
    if "flashinfer" in baselines and not flashinfer_baselines.available("decode", "prefill"):
        return [b for b in baselines if b != "flashinfer"]
    return list(baselines)


def plan_flashinfer(case: Any, inputs: Any, q_lens: Sequence[int] | None = None,
                    kv_lens: Sequence[int] | None = None
                    ) -> flashinfer_baselines.PlannedAttention:
    """FlashInfer's paged attention planned for the suite case `case` over the suite's own
    inputs (`inputs` as the suite's make_inputs returns them; q_lens / kv_lens: theirs when
    cut down from the case's)."""
    m = case.model
    return flashinfer_baselines.plan_paged_attention(
        case.kind, case.q_lens if q_lens is None else q_lens,
        case.kv_lens if kv_lens is None else kv_lens, inputs.kv.page_table,
        m.q_heads, m.kv_heads, m.head_dim, inputs.attn.shape.page_size, inputs.q.dtype,
        sm_scale=m.head_dim ** -0.5, window_left=m.window_left, sinks=inputs.sinks)


def time_flashinfer(row: dict[str, Any], case: Any, inputs: Any, config: TimingConfig
                    ) -> None:
    """Time FlashInfer's paged attention on the suite case `case` over the suite's own
    inputs (page table, q, K/V caches; `inputs` as the suite's make_inputs returns them),
    once its output agrees with ours on them; adds the flashinfer_* keys to row (and a note
    where sinks take its attention-sink variant)."""
    m = case.model
    if m.sinks:
        _add_note(row, flashinfer_baselines.SINKS_NOTE)
    kv, q = inputs.kv, inputs.q
    out = torch.empty_like(q)
    try:
        run = plan_flashinfer(case, inputs)
    except Exception as error:  # a baseline that cannot run a shape is reported, not fatal
        row["flashinfer_error"] = flashinfer_baselines.describe(error)
        return
    row["flashinfer_backend"] = run.backend
    for backend, why in run.fallbacks.items():
        _add_note(row, f"flashinfer: backend {backend} cannot run here ({why}); "
                  f"{run.backend} timed")

    def agreement() -> float:
        ours = inputs.attn.run(inputs.plan, q, kv.k_cache, kv.v_cache, sinks=inputs.sinks,
                               window_left=m.window_left)
        run(q, kv.k_cache, kv.v_cache, out)
        return flashinfer_baselines.rel_err(out, ours)

    flashinfer_baselines.check_then_time(
        row, agreement,
        lambda: time_calls([lambda: run(q, kv.k_cache, kv.v_cache, out)], config), row["us"])


def time_baselines(row: dict[str, Any], case: Any, baselines: Sequence[str],
                   dtype: torch.dtype, config: TimingConfig) -> None:
    """Time each baseline on the suite case `case` and add `<name>_us` and `vs_<name>`
    (baseline time over row["us"], ours) to its row; a baseline that cannot run the shape
    leaves `<name>_error` instead."""
    baselines = [b for b in baselines if b != "flashinfer"]  # paged: time_flashinfer
    if not baselines:
        return
    m = case.model
    q, k, v = contiguous_inputs(case, dtype)
    sinks = torch.randn(m.q_heads, device=q.device) if m.sinks else None
    for name in baselines:
        if name == "sdpa":
            fn = sdpa_decode(q[:, :, 0], k, v, m.window_left) if case.kind == "decode" \
                else sdpa_prefill(q, k, v)
        elif name == "flex":
            if case.kind == "decode" and len(case.kv_lens) not in FLEX_DECODE_BATCHES:
                continue
            fn = flex_attention_call(q, k, v, m.window_left, sinks)
        else:
            raise ValueError(f"unknown baseline {name}")
        try:
            other = time_calls([fn], config).median_us
        except Exception as err:  # a baseline that cannot run a shape is reported, not fatal
            row[f"{name}_error"] = f"{type(err).__name__}: {str(err).splitlines()[-1][:200]}"
            torch._dynamo.reset()
            continue
        row[f"{name}_us"] = other
        row[f"vs_{name}"] = other / row["us"]
    if m.sinks and "sdpa" in baselines:
        _add_note(row, "sdpa has no sinks: timed without them")
