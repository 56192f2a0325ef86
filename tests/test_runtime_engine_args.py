"""EngineArgs validates itself (each error names the field and what is allowed), and the
CLI options derived from its fields parse back to the same EngineArgs."""

from __future__ import annotations

import argparse

import pytest

from fuseinfer.runtime.engine_args import (
    SERVING_GC,
    EngineArgs,
    add_engine_args,
    engine_args_from,
)


@pytest.mark.parametrize("field, value, allowed", [
    ("kv_cache_dtype", "fp8", "fp8_e4m3"),  # once silently a bf16 cache
    ("schedule_policy", "random", "lpm"),
    ("load_format", "pt", "dummy"),
    ("dtype", "bf16", "bfloat16"),
    ("device", "tpu", "cuda"),
])
def test_unknown_choices_name_the_field_and_the_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=rf"EngineArgs\.{field}: '{value}'.*{allowed}"):
        EngineArgs(model="m", **{field: value})


@pytest.mark.parametrize("field, value", [
    ("page_size", 0), ("max_running_requests", 0), ("max_prefill_tokens", -1),
    ("cuda_graph_max_bs", 0), ("max_total_tokens", 0), ("max_context_len", 0),
    ("gc_warning_threshold_secs", -0.5), ("mem_fraction_static", 1.5),
    ("mem_fraction_static", 0.0), ("page_size", True), ("tp", 0),
])
def test_out_of_range_numbers_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"EngineArgs\.{field}"):
        EngineArgs(model="m", **{field: value})


def test_tensor_parallel_ranks_pick_their_own_gpus():
    with pytest.raises(ValueError, match="cuda:0..tp-1"):
        EngineArgs(model="m", tp=2, device="cuda:1")
    assert EngineArgs(model="m", tp=2, device="cuda").tp == 2


def test_library_defaults_leave_the_garbage_collector_alone():
    args = EngineArgs(model="m")
    assert not args.gc_freeze and args.gc_warning_threshold_secs == 0
    assert SERVING_GC["gc_freeze"] and SERVING_GC["gc_warning_threshold_secs"] > 0


def test_cli_options_round_trip():
    parser = argparse.ArgumentParser()
    add_engine_args(parser, defaults=SERVING_GC)
    ns = parser.parse_args(["--page-size", "16", "--kv-cache-dtype", "fp8_e4m3",
                            "--disable-radix-cache", "--no-gc-freeze",
                            "--max-total-tokens", "4096"])
    args = engine_args_from(ns, model="folder")
    assert (args.page_size, args.kv_cache_dtype, args.max_total_tokens) == (16, "fp8_e4m3",
                                                                             4096)
    assert args.disable_radix_cache and not args.gc_freeze and args.model == "folder"
    assert args.gc_warning_threshold_secs == SERVING_GC["gc_warning_threshold_secs"]
    with pytest.raises(SystemExit):  # argparse refuses a choice the dataclass would refuse
        parser.parse_args(["--kv-cache-dtype", "fp8"])
    only = argparse.ArgumentParser()
    add_engine_args(only, include=("device",))
    assert engine_args_from(only.parse_args([]), model="m") == EngineArgs(model="m")
    with pytest.raises(ValueError, match="not EngineArgs fields"):
        add_engine_args(argparse.ArgumentParser(), include=("pages",))
