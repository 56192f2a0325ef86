"""The decode sweep's variant list (microbench/decode_cuda_sweep.py) on the CPU: the Triton
variants --triton adds, named by their fields, only where the KV heads divide."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from fuseinfer.ops.attention.dispatch import attention_table

SCRIPT = Path(__file__).resolve().parents[1] / "microbench" / "decode_cuda_sweep.py"
spec = importlib.util.spec_from_file_location("decode_cuda_sweep", SCRIPT)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)
NAME = re.compile(r"triton n(\d+) w(\d+) s(\d+) h(\d+)( ctas(\d+))?$")


def _triton(trials):
    return [(name, t) for name, t in trials if name.startswith("triton ")]


def test_triton_variants_name_their_rule_and_respect_the_kv_heads():
    table = attention_table()
    for kv_heads, heads_allowed in ((8, {1, 2, 4}), (2, {1, 2}), (3, {1})):
        trials = sweep.variants(table, 64, 50, False, ctas=(8,), kv_heads=kv_heads)
        triton = _triton(trials)
        assert len(triton) == len(sweep.TRITON_VARIANTS) * len(heads_allowed) * 2
        assert len({name for name, _ in triton}) == len(triton)
        seen_heads = set()
        for name, t in triton:
            m = NAME.match(name)
            assert m, name
            assert len(t.decode_rules) == 1 and t.fp8_decode_rules == ()
            rule = t.decode_rules[0]
            assert rule.kernel == "triton" and rule.max_batch is None
            assert (rule.block_n, rule.num_warps, rule.num_stages,
                    rule.kv_heads_per_program) == tuple(int(g) for g in m.group(1, 2, 3, 4))
            assert rule.ctas_per_sm == (int(m.group(6)) if m.group(6) else None)
            seen_heads.add(rule.kv_heads_per_program)
        assert seen_heads == heads_allowed


def test_without_kv_heads_only_the_table_and_cuda_variants():
    trials = sweep.variants(attention_table(), 128, 64, True)
    assert not _triton(trials)
    assert trials[0][0].startswith("table ")
    assert all(name.startswith(("table ", "cuda ")) for name, _ in trials)
