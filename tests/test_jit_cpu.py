"""Build machinery without a GPU: module specs, ninja files with per-file flags, cache
keys, build-once under concurrency, toolkit errors and prebuilt matching."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fuseinfer.jit import ToolkitError, toolkit
from fuseinfer.jit.arch import arch_name, device_arch, gencode_flags
from fuseinfer.jit.cache import BuildKey, build_once, cached_builds, library_path
from fuseinfer.jit.loader import _matching_prebuilt, prebuilt_metadata
from fuseinfer.jit.module_spec import all_specs, load_spec
from fuseinfer.jit.ninja_build import BuildPlan, write_ninja


def _spec_with_two_sources(tmp_path: Path):
    family = tmp_path / "csrc" / "quant"
    family.mkdir(parents=True)
    (family / "plain.cu").write_text("// plain\n")
    (family / "fast.cu").write_text("// fast\n")
    (family / "module.json").write_text(json.dumps({
        "name": "quant", "include_dirs": ["quant"],
        "sources": [{"path": "plain.cu"}, {"path": "fast.cu", "flags": ["--use_fast_math"]}],
    }))
    return load_spec(family / "module.json")


def _fake_toolkit(tmp_path: Path) -> toolkit.CudaToolkit:
    return toolkit.CudaToolkit(tmp_path, tmp_path / "bin" / "nvcc", (13, 0))


def test_norm_module_spec_lists_cutlass_and_sources():
    spec = all_specs()["norm"]
    assert spec.uses_cutlass
    assert [s.path.name for s in spec.sources] == ["norm_ops.cu"]
    assert any(p.name == "pdl.cuh" for p in spec.input_files())


def test_per_file_flags_apply_to_that_file_only(tmp_path, monkeypatch):
    spec = _spec_with_two_sources(tmp_path)
    monkeypatch.setattr("fuseinfer.jit.ninja_build.cutlass_include_dirs", lambda: [])
    plan = BuildPlan(spec=spec, toolkit=_fake_toolkit(tmp_path), archs=("9.0a",))
    text = write_ninja(plan, tmp_path, tmp_path / "quant.so").read_text()
    blocks = text.split("\nbuild ")
    fast = next(b for b in blocks if b.startswith("quant_fast.cu.o"))
    plain = next(b for b in blocks if b.startswith("quant_plain.cu.o"))
    assert "file_flags = --use_fast_math" in fast
    assert "use_fast_math" not in plain
    assert "use_fast_math" not in text.split("rule nvcc")[0]  # not in the common flags
    assert "-gencode=arch=compute_90a,code=sm_90a" in text
    assert "build quant.so: link quant_plain.cu.o quant_fast.cu.o" in text


def test_unknown_source_field_is_an_error(tmp_path):
    spec = _spec_with_two_sources(tmp_path)
    module = spec.sources[0].path.parent / "module.json"
    data = json.loads(module.read_text())
    data["sources"][1] = {"path": "fast.cu", "flag": ["--use_fast_math"]}
    module.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['flag'\] in a source entry"):
        load_spec(module)


def test_cache_key_tracks_sources_flags_and_torch(tmp_path):
    spec = _spec_with_two_sources(tmp_path)
    key = BuildKey("quant", spec.sources_digest(), ("-O3",), "2.11.0", "13.0", ("9.0a",), "4.2")
    assert replace(key, torch_version="2.12.0").digest() != key.digest()
    assert replace(key, archs=("10.0a",)).digest() != key.digest()
    assert replace(key, flags=("-O2",)).digest() != key.digest()
    before = spec.sources_digest()
    (spec.sources[0].path).write_text("// changed\n")
    assert spec.sources_digest() != before
    after_source = spec.sources_digest()
    (spec.include_dirs[0] / "helper.cuh").write_text("// a header the sources include\n")
    assert spec.sources_digest() != after_source


def _slow_build(root: str, key: BuildKey, counter: str) -> str:
    def build(folder: Path, partial: Path) -> None:
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # long enough for the other process to reach the lock
        partial.write_bytes(b"\x7fELF fake library")

    path, built = build_once(key, build, Path(root))
    whole = path.read_bytes() == b"\x7fELF fake library"
    return f"{built}:{whole}"


def test_concurrent_builders_build_once(tmp_path):
    key = BuildKey("norm", "abc", (), "2.11.0", "13.0", ("9.0a",), "")
    counter = tmp_path / "count"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_slow_build, [(str(tmp_path), key, str(counter))] * 3)
    assert counter.read_text().count("built") == 1
    assert sorted(results) == ["False:True", "False:True", "True:True"]
    assert library_path(key, tmp_path).is_file()
    assert not list(tmp_path.rglob("*.partial"))
    assert [b["module"] for b in cached_builds(tmp_path)] == ["norm"]


def test_cpu_torch_gives_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    with pytest.raises(ToolkitError, match="has no CUDA support"):
        toolkit.find_toolkit()


def test_rocm_torch_gives_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2", raising=False)
    with pytest.raises(ToolkitError, match="CUDA-only.*ROCm"):
        toolkit.torch_cuda_version()


def test_missing_nvcc(monkeypatch, tmp_path):
    monkeypatch.setattr(toolkit, "torch_cuda_version", lambda: (13, 0))
    monkeypatch.setenv("FUSEINFER_NVCC", str(tmp_path / "no-nvcc"))
    with pytest.raises(ToolkitError, match=r"nvcc not found.*CUDA 13\.x toolkit"):
        toolkit.find_toolkit()


def test_wrong_nvcc_version(monkeypatch, tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(toolkit, "torch_cuda_version", lambda: (13, 0))
    monkeypatch.setenv("FUSEINFER_NVCC", str(nvcc))
    with pytest.raises(ToolkitError, match=r"CUDA 12\.4 but torch was built with CUDA 13\.0"):
        toolkit.find_toolkit()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.1, V13.1.0'\n")
    toolkit._nvcc_version.cache_clear()
    assert toolkit.find_toolkit().version == (13, 1)


def test_missing_cutlass(monkeypatch):
    monkeypatch.setattr(toolkit.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ToolkitError, match="pip install --no-deps nvidia-cutlass"):
        toolkit.cutlass_include_dirs()


def test_arch_flags(monkeypatch):
    assert arch_name(9, 0) == "9.0a" and arch_name(10, 0) == "10.0a"
    assert arch_name(8, 0) == "8.0" and arch_name(8, 9) == "8.9"
    assert gencode_flags("10.0a") == ["-gencode=arch=compute_100a,code=sm_100a"]
    assert gencode_flags("8.6") == ["-gencode=arch=compute_86,code=sm_86"]
    with pytest.raises(ValueError, match="bad CUDA arch"):
        gencode_flags("sm90")
    monkeypatch.setenv("FUSEINFER_CUDA_ARCH", "9.0a")
    assert device_arch() == "9.0a"


def test_prebuilt_taken_only_when_it_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEINFER_PREBUILT_DIR", str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    spec = all_specs()["norm"]
    (tmp_path / "norm.so").write_bytes(b"lib")
    meta = prebuilt_metadata(spec, "13.0") | {"archs": ["9.0a", "10.0a"]}
    (tmp_path / "norm.json").write_text(json.dumps(meta))
    assert _matching_prebuilt(spec, "9.0a") == tmp_path / "norm.so"
    assert _matching_prebuilt(spec, "8.0") is None
    for field, value in (("torch", "0.0.0"), ("sources_digest", "stale"), ("cuda", "12.8")):
        (tmp_path / "norm.json").write_text(json.dumps(meta | {field: value}))
        assert _matching_prebuilt(spec, "9.0a") is None
