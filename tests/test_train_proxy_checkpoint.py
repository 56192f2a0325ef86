"""The proxy-checkpoint trainer (microbench/train_proxy_checkpoint.py) on the CPU: which
files make the corpus, its cap, and a short training run whose checkpoint transformers and
the runtime both load (bench kv-accuracy on it)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import fuseinfer

SCRIPT = Path(__file__).resolve().parents[1] / "microbench" / "train_proxy_checkpoint.py"
spec = importlib.util.spec_from_file_location("train_proxy_checkpoint", SCRIPT)
proxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(proxy)
PACKAGE = Path(fuseinfer.__file__).parent  # 1.4 MB of .py text


def test_corpus_takes_text_files_in_path_order_up_to_the_cap(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_bytes(b"Z" * 700_000)
    (tmp_path / "a.md").write_bytes(b"A" * 600_000)
    (tmp_path / "skip.bin").write_bytes(b"S" * 900_000)
    (tmp_path / "c.txt").write_bytes(b"C" * 500_000)
    data = proxy.corpus_bytes([tmp_path], max_bytes=1_500_000)
    assert data.dtype == torch.uint8 and data.numel() == 1_500_000
    text = bytes(data.tolist())
    # sorted paths: a.md, b/z.py, c.txt; the .bin file never
    assert text == b"A" * 600_000 + b"Z" * 700_000 + b"C" * 200_000


def test_corpus_under_one_mib_is_refused(tmp_path):
    (tmp_path / "small.py").write_bytes(b"x = 1\n" * 1000)
    with pytest.raises(SystemExit, match="need at least 1 MiB"):
        proxy.corpus_bytes([tmp_path], max_bytes=1 << 30)


def test_short_training_lowers_the_loss_and_the_runtime_loads_the_checkpoint(tmp_path,
                                                                                 monkeypatch,
                                                                                 capsys):
    out = tmp_path / "proxy"
    monkeypatch.setattr(sys, "argv", [
        "train_proxy_checkpoint.py", str(out), "--seconds", "4", "--corpus", str(PACKAGE),
        "--hidden", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
        "--head-dim", "64", "--batch", "8", "--seq", "64", "--log-every", "1",
        "--max-bytes", str(1_200_000)])
    proxy.main()
    losses = [float(line.split("loss ")[1].split()[0])
              for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(losses) > 20
    # from uniform over 256 bytes (ln 256 = 5.55) to well below it
    assert losses[0] > 5.0 and min(losses[-10:]) < 4.0
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 256 and config["num_key_value_heads"] == 1
    assert config["model_type"] == "qwen3"

    from fuseinfer.bench.e2e import kv_accuracy

    rows = kv_accuracy.run(str(out), "cpu", ["bf16", "fp8-one"], prompts=1, prompt_len=16,
                           new_tokens=8, threshold=0.5)
    assert [r["variant"] for r in rows] == ["bf16", "fp8-one"]
    # the runtime's float cache follows transformers' fp32 logits closely; e4m3 moves them
    assert rows[0]["max_drift"] < 1e-2
    assert rows[1]["max_drift"] > rows[0]["max_drift"]


def test_bad_head_counts_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train_proxy_checkpoint.py", str(tmp_path / "x"),
                                      "--heads", "6", "--kv-heads", "4"])
    with pytest.raises(SystemExit, match="multiple of --kv-heads"):
        proxy.main()
