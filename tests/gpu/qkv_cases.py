"""Inputs and checks shared by the RoPE and KV-cache GPU tests: a fused qkv buffer with
q, k and v as column views, flat or paged caches poisoned with NaN, slots and positions,
and the CPU reference run on copies of the same views."""

from __future__ import annotations

import torch

import fuseinfer

TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-5}


def cos_sin(max_pos: int, rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv
    return torch.cat((ang.cos(), ang.sin()), dim=-1).float().cuda()


def make_case(tokens, q_heads, k_heads, head, rotary, dtype, cache="flat", cache_dtype=None,
              index_dtype=torch.int64, pad=0):
    width = (q_heads + 2 * k_heads) * head
    qkv = torch.randn(tokens, width + pad, device="cuda", dtype=dtype)
    q = qkv[:, : q_heads * head]
    k = qkv[:, q_heads * head: (q_heads + k_heads) * head]
    v = qkv[:, (q_heads + k_heads) * head: width]
    slots = max(2 * tokens, 16)
    cache_dtype = cache_dtype or dtype
    shape = (slots // 4, 4, k_heads, head) if cache == "paged" else (slots, k_heads, head)
    kc = torch.full(shape, float("nan"), device="cuda").to(cache_dtype)
    vc = torch.full(shape, float("nan"), device="cuda").to(cache_dtype)
    loc = torch.randperm(slots, device="cuda")[:tokens].to(index_dtype)
    pos = torch.randint(0, 4096, (tokens,), device="cuda").to(index_dtype)
    return qkv, q, k, v, kc, vc, loc, pos, cos_sin(4096, rotary)


def cpu_run(args, head, is_neox, scales=(None, None)):
    cpu = [t.cpu().clone() if isinstance(t, torch.Tensor) else t for t in args]
    qkv, q, k, v, kc, vc, loc, pos, cs = cpu
    q, k, v = (t.as_strided(s.shape, s.stride(), s.storage_offset()) for t, s in
               ((qkv, args[1]), (qkv, args[2]), (qkv, args[3])))
    ks, vs = (s.cpu() if s is not None else None for s in scales)
    fuseinfer.ops.rope_with_cos_sin_cache(pos, q, k, head, cs, is_neox, v, kc, vc, loc, ks, vs)
    return qkv, kc, vc


def assert_close(got, want, dtype):
    assert not torch.isnan(got.float()).any()
    torch.testing.assert_close(got.float().cpu(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])
