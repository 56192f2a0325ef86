"""What `fuseinfer bench attention` runs with no GPU: the CPU reference through the ops on
tiny paged shapes (decode with sinks and a window, ragged extend), each checked against
torch SDPA on the same keys gathered contiguously, timed with the host clock."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...ops import AttentionShape, PagedAttention
from ..attention_inputs import make_paged_kv
from ..report import Column
from ..timing import time_eager_cpu

COLUMNS = [
    Column("kind", "kind", align="<"),
    Column("shape", "shape", align="<"),
    Column("us", "CPU us", "{:.1f}"),
    Column("rel_err", "rel err vs sdpa", "{:.1e}"),
]
CHECKED_AGAINST = "torch SDPA"
CASES = (("decode", [1] * 4, [300, 17, 64, 1]), ("prefill", [40, 7], [40, 100]))


def _sdpa(q, k, v, prefix):
    n = q.size(0)
    pos = torch.arange(prefix, prefix + n)
    mask = torch.arange(k.size(0))[None, :] <= pos[:, None]
    group = q.size(1) // k.size(1)
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1),
        v.repeat_interleave(group, 1).transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def run() -> list[dict[str, Any]]:
    rows = []
    for kind, q_lens, kv_lens in CASES:
        kv = make_paged_kv(kv_lens, 2, 64, 16, torch.bfloat16, "cpu")
        attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu")
        plan = attn.plan_decode(kv_lens, kv.page_table) if kind == "decode" \
            else attn.plan_prefill(q_lens, kv_lens, kv.page_table)
        q = torch.randn(sum(q_lens), 8, 64).to(torch.bfloat16)
        out = attn.run(plan, q, kv.k_cache, kv.v_cache)
        timed = time_eager_cpu(
            lambda a=attn, p=plan, x=q, c=kv: a.run(p, x, c.k_cache, c.v_cache))
        want, at = [], 0
        for b, (n, length) in enumerate(zip(q_lens, kv_lens, strict=True)):
            k, v = kv.contiguous(b, length)
            want.append(_sdpa(q[at:at + n], k, v, length - n))
            at += n
        want_t = torch.cat(want)
        err = ((out.float() - want_t).norm() / want_t.norm()).item()
        rows.append({"kind": kind, "shape": f"q {q_lens} kv {kv_lens}",
                     "us": timed.median_us, "rel_err": err})
    return rows
