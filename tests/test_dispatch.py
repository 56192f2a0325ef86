"""GPU identity -> table key, lookup order, and strict table validation."""

from __future__ import annotations

import json

import pytest
import torch

import fuseinfer  # noqa: F401  (registers the norm table schema)
from fuseinfer.dispatch import GpuIdentity, TableError, gpu_key, lookup, write_entry
from fuseinfer.dispatch.identity import family_key
from fuseinfer.dispatch.tables import load_table
from fuseinfer.ops.norm.dispatch import BUILTIN, NormDispatch, NormLaunchRule, push_to_device
from fuseinfer.paths import tables_dir

GIB = 1 << 30


def ident(name, major=9, minor=0, sms=132, mem=80):
    return GpuIdentity(name, sms, major, minor, mem * GIB)


@pytest.mark.parametrize("name,major,minor,key", [
    ("NVIDIA H100 80GB HBM3", 9, 0, "h100"),
    ("NVIDIA H100 PCIe", 9, 0, "h100"),
    ("NVIDIA H200", 9, 0, "h200"),
    ("NVIDIA GH200 480GB", 9, 0, "h200"),
    ("NVIDIA H20", 9, 0, "h20"),
    ("NVIDIA H800", 9, 0, "h800"),
    ("NVIDIA B200", 10, 0, "b200"),
    ("NVIDIA A100-SXM4-80GB", 8, 0, "sm80"),
    ("NVIDIA GeForce RTX 4090", 8, 9, "sm80"),
    ("NVIDIA RTX PRO 6000 Blackwell", 12, 0, "sm120"),
    ("Some Future Hopper", 9, 0, "sm90"),
])
def test_gpu_key(name, major, minor, key):
    assert gpu_key(ident(name, major, minor)) == key


def _table(ops):
    return {"description": "test", "ops": ops}


def _rules():
    return [
        {"max_hidden": 4096, "max_tokens": 256, "threads_per_row": 256, "rows_per_block": 1},
        {"max_hidden": None, "max_tokens": None, "threads_per_row": 128, "rows_per_block": 2},
    ]


def _norm_entry(**overrides):
    entry = {"source": "tuned on test 2026-01-01", "enable_pdl": True,
             "rmsnorm_rules": _rules(), "fused_add_rules": _rules()}
    entry.update(overrides)
    return entry


def _write(directory, key, data):
    (directory / f"{key}.json").write_text(json.dumps(data))


def test_lookup_order_model_then_family_then_builtin(tmp_path):
    h100 = ident("NVIDIA H100 80GB HBM3")
    assert lookup("norm", h100, tmp_path).table_key == "builtin"
    assert lookup("norm", h100, tmp_path).entry == BUILTIN
    _write(tmp_path, "sm90", _table({"norm": _norm_entry(source="sm90 default")}))
    choice = lookup("norm", h100, tmp_path)
    assert (choice.table_key, choice.source) == ("sm90", "sm90 default")
    _write(tmp_path, "h100", _table({"norm": _norm_entry(source="h100 tuned")}))
    assert lookup("norm", h100, tmp_path).source == "h100 tuned"
    assert lookup("norm", ident("NVIDIA H800"), tmp_path).source == "sm90 default"
    assert lookup("norm", None, tmp_path).table_key == "builtin"


def test_model_table_without_the_op_falls_through(tmp_path):
    _write(tmp_path, "h100", _table({}))
    _write(tmp_path, "sm90", _table({"norm": _norm_entry(source="family")}))
    assert lookup("norm", ident("NVIDIA H100"), tmp_path).source == "family"


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t["ops"].update(nonexistent_op={}), "unknown op 'nonexistent_op'"),
    (lambda t: t.update(extra=1), "unknown top-level field"),
    (lambda t: t["ops"]["norm"].update(threads=3), r"unknown field\(s\) \['threads'\]"),
    (lambda t: t["ops"]["norm"].pop("source"), "missing field 'source'"),
    (lambda t: t["ops"]["norm"].update(enable_pdl="yes"), "expected true or false"),
    (lambda t: t["ops"]["norm"]["fused_add_rules"][0].update(threads_per_row=True),
     "expected an integer"),
    (lambda t: t["ops"]["norm"]["fused_add_rules"][0].update(threads_per_row=48), "multiple of 32"),
    (lambda t: t["ops"]["norm"]["fused_add_rules"][0].update(rows_per_block=8), "exceed 1024"),
    (lambda t: t["ops"]["norm"]["rmsnorm_rules"].pop(), "last rule must match everything"),
    (lambda t: t["ops"]["norm"].update(fused_add_rules=[]), "fused_add_rules: needs at least"),
    (lambda t: t["ops"]["norm"].pop("rmsnorm_rules"), "missing field 'rmsnorm_rules'"),
    (lambda t: t["ops"]["norm"]["fused_add_rules"][0].update(max_tokens=0), "must be >= 1 or null"),
])
def test_validation_errors(tmp_path, mutate, message):
    data = _table({"norm": _norm_entry()})
    mutate(data)
    _write(tmp_path, "h100", data)
    with pytest.raises(TableError, match=message):
        lookup("norm", ident("NVIDIA H100"), tmp_path)


def test_bad_json_is_a_table_error(tmp_path):
    (tmp_path / "h100.json").write_text("{not json")
    with pytest.raises(TableError, match="not valid JSON"):
        lookup("norm", ident("NVIDIA H100"), tmp_path)


def test_shipped_tables_are_valid_and_sourced():
    files = sorted(tables_dir().glob("*.json"))
    assert {f.stem for f in files} >= {"h100", "h200", "sm90", "sm100"}
    for path in files:
        entries = load_table(path)
        assert entries, f"{path.name} has no ops"
        for entry in entries.values():
            assert entry.source.startswith(("tuned on ", "published: ", "default: "))


def test_write_entry_roundtrip_and_refuses_invalid(tmp_path):
    path = tmp_path / "h100.json"
    rule = (NormLaunchRule(None, None, 64, 4),)
    entry = NormDispatch("tuned on test", False, rule, rule)
    write_entry(path, "norm", entry, key="h100", description="test gpu")
    assert load_table(path)["norm"] == entry
    bad = NormDispatch("x", True, rule, (NormLaunchRule(1024, None, 64, 4),))
    with pytest.raises(TableError):
        write_entry(path, "norm", bad, key="h100")
    assert load_table(path)["norm"] == entry  # the file was left as it was


def test_norm_push_hands_both_rule_lists_to_the_module(monkeypatch):
    """push_to_device flattens the entry into _norm_configure's arguments: kind 0 for the
    rmsnorm rules, 1 for the fused-add ones, in table order, null bounds as -1. (The rule
    the C++ launcher then picks is checked through the op in tests/gpu/test_norm_gpu.py.)"""
    calls = []
    monkeypatch.setattr(torch.ops.fuseinfer, "_norm_configure",
                        lambda *args: calls.append(args), raising=False)
    plain = (NormLaunchRule(1024, 64, 32, 4), NormLaunchRule(None, None, 256, 1))
    fused = (NormLaunchRule(None, 128, 512, 2), NormLaunchRule(None, None, 64, 8))
    push_to_device(3, NormDispatch("test", False, plain, fused))
    assert calls == [(3, [0, 0, 1, 1], [1024, -1, -1, -1], [64, -1, 128, -1],
                      [32, 256, 512, 64], [4, 1, 2, 8], False)]


def test_family_key():
    assert family_key(ident("x", 9, 0)) == "sm90"
    assert family_key(ident("x", 10, 3)) == "sm100"


def test_key_must_match_file_name(tmp_path):
    data = _table({"norm": _norm_entry()}) | {"key": "h200"}
    _write(tmp_path, "h100", data)
    with pytest.raises(TableError, match="key 'h200' does not match the file name"):
        lookup("norm", ident("NVIDIA H100"), tmp_path)


def test_rope_rules_need_positive_token_bounds(tmp_path):
    entry = {"source": "tuned on test", "enable_pdl": True, "rules": [
        {"max_tokens": -5, "tokens_per_block": 1, "heads_per_block": 0, "threads_per_block": 128},
        {"max_tokens": None, "tokens_per_block": 1, "heads_per_block": 0,
         "threads_per_block": 256}]}
    _write(tmp_path, "h100", _table({"rope": entry}))
    with pytest.raises(TableError, match="max_tokens: must be >= 1 or null"):
        lookup("rope", ident("NVIDIA H100"), tmp_path)
