"""FlashInfer's Hopper fused MoE (cutlass_fused_moe) as `fuseinfer bench moe` calls it
(bench/moe_baselines.py: experts re-laid out up-then-gate, fp8 block scales alongside,
the workspace sized once), built as the trimmed SM90 module (bench/flashinfer_moe_build.py),
against the float32 reference and our fused_moe on a small shape; then the suite's
check-then-time path. Skipped without FlashInfer or off SM90. The first test builds the
trimmed module (~35 CUTLASS units: minutes on the lent machine's 16 cores)."""

from __future__ import annotations

import pytest
import torch

from fuseinfer.bench import moe_baselines as mb
from fuseinfer.bench.suites import moe as suite
from fuseinfer.bench.timing import TimingConfig

QUICK = TimingConfig(repeats=2, target_graph_ms=0.2)
SMALL = mb.MoeModel("small", 8, 2, 256, 384, renormalize=True)  # H, I multiples of 128


@pytest.fixture(autouse=True, scope="module")
def _flashinfer_on_hopper():
    pytest.importorskip("flashinfer")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the trimmed FlashInfer MoE module is built for SM90")


@pytest.mark.parametrize("quant", [None, "fp8_block"])
def test_cutlass_fused_moe_matches_the_reference_and_ours(quant):
    from fuseinfer.ops.moe.fused_moe import fused_moe

    torch.manual_seed(0)
    weights = mb.make_weights(SMALL, quant)
    layer = mb.flashinfer_layer(mb.flashinfer_weights(weights), SMALL.topk, 64)
    tol = mb.LAYER_REL_ERR[quant]
    for tokens in (1, 7, 64):
        hidden = torch.randn(tokens, SMALL.hidden, device="cuda").to(torch.bfloat16)
        routing = mb.reference_routing(SMALL, *mb.make_logits(SMALL, tokens))
        theirs = torch.full_like(hidden, float("nan"))
        assert layer(hidden, routing, theirs) is theirs
        ours = torch.empty_like(hidden)
        fused_moe(hidden, weights.w13, weights.w2, routing[0], routing[1], quant=quant,
                  w13_scales=weights.w13_scales, w2_scales=weights.w2_scales, out=ours)
        err = mb.layer_rel_err(theirs, hidden, weights, routing)
        assert err < tol, (tokens, err)
        assert mb.rel_err(theirs, ours) < tol, tokens


def test_moe_suite_times_flashinfer():
    rows = suite.run([SMALL], [1, 33], ["layer"], ["flashinfer"], [None, "fp8_block"], None,
                     config=QUICK)
    assert [(r["quant"], r["tokens"]) for r in rows] == [
        ("bf16", 1), ("bf16", 33), ("fp8_block", 1), ("fp8_block", 33)]
    for row in rows:
        assert row["flashinfer_us"] > 0 and row.get("not_timed") is None, row
        assert row["vs_flashinfer"] == pytest.approx(row["flashinfer_us"] / row["us"])
