"""`fuseinfer bench kv-accuracy` on the CPU with a tiny Qwen3 checkpoint whose V projections
are 256x smaller (o projections 256x larger: the same function), so an FP8 cache at unit
scales loses its values and a calibrated one keeps them; the float cache is the floor."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import run_cli  # tests/ is on sys.path
from tiny_checkpoint import save_small_v_checkpoint

from fuseinfer.bench.e2e import kv_accuracy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3-small-v")
    save_small_v_checkpoint(path)
    return path


def test_drift_per_kv_setting(checkpoint):
    rows = kv_accuracy.run(str(checkpoint), "cpu", ["bf16", "fp8", "fp8-one"], prompts=2,
                           prompt_len=24, new_tokens=8, threshold=0.5)
    got = {r["variant"]: r for r in rows}
    assert all(r["positions"] == 16 for r in rows)
    # the float cache: the runtime's own arithmetic only
    assert got["bf16"]["max_drift"] < 1e-3 and got["bf16"]["flips"] == 0
    assert got["bf16"]["pct_drift_over"] == 0.0
    # unit scales lose the small values; calibrated ones keep them
    assert got["fp8-one"]["max_drift"] > 4 * got["fp8"]["max_drift"]
    assert got["fp8"]["max_drift"] < 0.5


def test_compare_counts_positions_over_the_threshold():
    theirs = torch.zeros(4, 3)
    ours = theirs.clone()
    ours[1, 2] = 0.7   # a non-greedy logit moves: drift only
    ours[3, 0] = -0.6  # the greedy token's logit moves, and the argmax flips
    got = kv_accuracy.compare(ours, theirs, [0, 0, 0, 0], 0.5)
    assert got["pct_drift_over"] == 50.0 and got["pct_top_over"] == 25.0
    assert got["flips"] == 2 and got["max_drift"] == pytest.approx(0.7)


def test_cli_needs_a_checkpoint_folder(tmp_path, checkpoint):
    bad = run_cli("bench", "kv-accuracy", "--model", str(tmp_path))
    assert bad.returncode != 0 and "needs a checkpoint folder" in bad.stderr
    out = tmp_path / "rows.json"
    ok = run_cli("bench", "kv-accuracy", "--model", str(checkpoint), "--device", "cpu",
                 "--variants", "bf16", "--prompts", "1", "--prompt-len", "8",
                 "--new-tokens", "4", "--json", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "bf16: drift max" in ok.stdout
    assert json.loads(out.read_text())["rows"][0]["positions"] == 4
