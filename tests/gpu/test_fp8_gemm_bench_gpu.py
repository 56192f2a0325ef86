"""`fuseinfer bench fp8-gemm` and `fuseinfer tune fp8-gemm` on a GPU, at a small size: our
rows checked and timed with the table's configuration recorded, the cuBLAS baselines either
timed or reported with their error, and the tuner writing a loadable entry."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import fp8_gemm_baselines as baselines
from fuseinfer.bench.suites import fp8_gemm as suite
from fuseinfer.bench.suites import fp8_gemm_tune as tune
from fuseinfer.bench.timing import TimingConfig
from fuseinfer.dispatch.tables import parse_table
from fuseinfer.ops.gemm.fp8_gemm_dispatch import CONFIGS

FAST = TimingConfig(repeats=3, target_graph_ms=0.5)
SQUARE = suite.GemmShape("square", "1024x1024", 1024, 1024)


def _sm90_or_newer() -> bool:
    return torch.cuda.get_device_capability()[0] >= 9


def test_rows_are_checked_timed_and_name_their_config():
    rows = suite.run([SQUARE], [1, 128], list(baselines.BASELINES), suite.Peaks(1000.0, 4000.0),
                     config=FAST)
    for row in rows:
        assert "note" not in row, row.get("note")
        assert row["rel_err"] < 2e-2 and row["us"] > 0 and row["timing"] == "cuda_graph"
        if _sm90_or_newer():
            assert row["config"] in CONFIGS
        for name in baselines.BASELINES:
            # each baseline is either timed (with its ratio) or reported, never both
            # (FlashInfer's are left out entirely where it is not installed)
            timed, failed = f"vs_{name}" in row, f"{name}_error" in row
            assert timed != failed or name.startswith("flashinfer")
        assert "vs_cublas_tensor" in row and "vs_bf16" in row


def test_blockwise_cublas_at_m1_is_reported_or_agrees():
    ops = baselines.make_operands(1, 2112, 7168)
    try:
        call = baselines.cublas_block(ops)
    except RuntimeError as error:
        assert str(error)  # the failure text is what the row records
        return
    assert baselines.checked_rel_err(call, ops, "cublas_block") < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="the sm90 configuration menu")
def test_tuner_writes_a_loadable_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "BUCKETS", ((16, (1,)), (None, (256,))))
    monkeypatch.setattr(tune, "TimingConfig", lambda **kwargs: FAST)
    monkeypatch.setattr(tune, "select_shapes", lambda models: [SQUARE])
    out, log = tmp_path / "table.json", tmp_path / "log.json"
    args = argparse.Namespace(models=None, output=out, log=log)
    assert tune.tune_command(args) == 0
    entry = parse_table(json.loads(out.read_text()), "table.json")["fp8_gemm"]
    assert entry.source.startswith("tuned on ") and entry.enable_pdl
    assert entry.rules[-1].max_m is None
    timings = json.loads(log.read_text())["timings"]
    assert any("us" in t for t in timings) and any("check" in t for t in timings)
