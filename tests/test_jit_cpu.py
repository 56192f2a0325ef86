"""Build machinery without a GPU: module specs, ninja files with per-file flags, cache
keys, build-once under concurrency, toolkit errors, prebuilt matching, and the compile
check's ptxas summary and stamps (nvcc and ninja faked)."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fuseinfer.jit import BuildError, ToolkitError, compile_check, toolkit
from fuseinfer.jit.arch import arch_name, device_arch, gencode_flags
from fuseinfer.jit.cache import BuildKey, build_once, cached_builds, library_path
from fuseinfer.jit.compile_stamp import check_digest
from fuseinfer.jit.loader import _matching_prebuilt, prebuilt_metadata
from fuseinfer.jit.module_spec import all_specs, load_spec
from fuseinfer.jit.ninja_build import BuildPlan, write_ninja
from fuseinfer.jit.ptxas_report import ModuleReport, parse_ptxas


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
    assert "file_flags = -gencode=arch=compute_90a,code=sm_90a --use_fast_math" in fast
    assert "use_fast_math" not in plain
    assert "use_fast_math" not in text.split("rule nvcc")[0]  # not in the common flags
    assert "-gencode=arch=compute_90a,code=sm_90a" in text
    assert "build quant.so: link quant_plain.cu.o quant_fast.cu.o" in text


def _spec_with_arch_sources(tmp_path: Path):
    family = tmp_path / "csrc" / "gemm"
    family.mkdir(parents=True)
    for name in ("ops.cu", "h1.cu", "h2.cu", "b1.cu"):
        (family / name).write_text(f"// {name}\n")
    (family / "module.json").write_text(json.dumps({
        "name": "gemm", "include_dirs": ["gemm"],
        "sources": [{"path": "ops.cu"},
                    {"path": "h1.cu", "archs": ["9.0a"], "quick_check": True},
                    {"path": "h2.cu", "archs": ["9.0a"]},
                    {"path": "b1.cu", "archs": ["10.0a"], "quick_check": True}],
    }))
    return load_spec(family / "module.json")


def test_arch_specific_sources_build_only_for_their_arch(tmp_path, monkeypatch):
    spec = _spec_with_arch_sources(tmp_path)
    monkeypatch.setattr("fuseinfer.jit.ninja_build.cutlass_include_dirs", lambda: [])
    plan = BuildPlan(spec=spec, toolkit=_fake_toolkit(tmp_path), archs=("9.0a", "10.0a"))
    blocks = write_ninja(plan, tmp_path, tmp_path / "gemm.so").read_text().split("\nbuild ")
    block = {b.split(".cu.o")[0]: b for b in blocks if ".cu.o:" in b.split("\n")[0]}
    hopper, blackwell = "code=sm_90a", "code=sm_100a"
    assert hopper in block["gemm_ops"] and blackwell in block["gemm_ops"]
    assert hopper in block["gemm_h1"] and blackwell not in block["gemm_h1"]
    assert blackwell in block["gemm_b1"] and hopper not in block["gemm_b1"]
    only_hopper = BuildPlan(spec=spec, toolkit=_fake_toolkit(tmp_path), archs=("9.0a",))
    text = write_ninja(only_hopper, tmp_path, tmp_path / "gemm.so").read_text()
    assert "b1.cu" not in text and "h2.cu" in text
    assert "build gemm.so: link gemm_ops.cu.o gemm_h1.cu.o gemm_h2.cu.o" in text


def test_quick_subset_keeps_marked_and_shared_sources(tmp_path):
    spec = _spec_with_arch_sources(tmp_path)
    quick = spec.quick_subset()
    assert [s.path.name for s in quick.sources] == ["ops.cu", "h1.cu", "b1.cu"]
    assert [s.path.name for s in quick.sources_for(("10.0a",))] == ["ops.cu", "b1.cu"]
    plain = _spec_with_two_sources(tmp_path / "other")
    assert plain.quick_subset() is plain  # nothing marked: the whole module


def test_gemm_module_lists_every_configuration_of_the_menu():
    from fuseinfer.ops.gemm.fp8_gemm_dispatch import CONFIGS, TRITON_GEMV

    spec = all_specs()["gemm"]
    configs = {s.path.stem for s in spec.sources if s.archs}
    assert configs == set(CONFIGS) - {TRITON_GEMV}  # the gemv is Triton, not a source here
    for source in spec.sources:
        if source.archs:  # each configuration's file registers itself under its own name
            assert f"({source.path.stem}," in source.path.read_text()
    assert all(s.archs == ("9.0a",) for s in spec.sources if s.path.stem.startswith("sm90_"))
    assert any(s.quick_check for s in spec.sources if s.path.stem.startswith("sm100_"))


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


# ---- compile check: ptxas summary and the stamp that skips unchanged modules --------------

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4fastPf' for 'sm_90a'
ptxas info    : Function properties for _Z4fastPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 380 bytes cmem[0]
ptxas info    : Compiling entry function '_Z5plainPf' for 'sm_90a'
ptxas info    : Function properties for _Z5plainPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers, 380 bytes cmem[0]
"""
SPILLING_LOG = PTXAS_LOG.replace("0 bytes spill stores, 0 bytes spill loads",
                                 "8 bytes spill stores, 12 bytes spill loads", 1)
NVCC = "Cuda compilation tools, release 13.0, V13.0.48"


def test_ptxas_report_summary_and_spills():
    report = parse_ptxas("quant", PTXAS_LOG)
    assert [(k.name, k.registers, k.smem_bytes) for k in report.kernels] == [
        ("_Z4fastPf", 40, 1024), ("_Z5plainPf", 18, 0)]
    assert report.summary() == ("quant: 2 kernels, at most 40 registers and 1024 B shared "
                                "memory, no spills")
    assert report.spilling() == [] and len(report.details()) == 2
    assert ModuleReport.from_json(report.to_json()) == report
    spilled = parse_ptxas("quant", SPILLING_LOG)
    assert spilled.spilling() == ["_Z4fastPf"] and "1 kernels spill registers" in spilled.summary()
    assert "SPILLS 8 B stored, 12 B loaded" in spilled.details()[0]
    loose = parse_ptxas("quant", "    0 bytes stack frame, 4 bytes spill stores, "
                                 "4 bytes spill loads\n" + PTXAS_LOG)
    assert loose.spilling() == ["a device function"]


def test_check_digest_tracks_sources_flags_and_nvcc(tmp_path):
    spec = _spec_with_two_sources(tmp_path)
    plan = BuildPlan(spec=spec, toolkit=_fake_toolkit(tmp_path), archs=("9.0a",))
    base = check_digest(plan, NVCC, False)
    assert check_digest(plan, NVCC, False) == base
    # the header shim lives in a fresh temporary folder each run: only its use counts
    assert check_digest(replace(plan, extra_includes=(tmp_path / "elsewhere",)), NVCC,
                        False) == base
    assert check_digest(plan, NVCC, True) != base
    assert check_digest(plan, NVCC.replace("V13.0.48", "V13.0.88"), False) != base
    assert check_digest(replace(plan, archs=("10.0a",)), NVCC, False) != base
    fast = replace(spec.sources[1], flags=("--use_fast_math", "-DX"))
    flags_changed = replace(plan, spec=replace(spec, sources=(spec.sources[0], fast)))
    assert check_digest(flags_changed, NVCC, False) != base
    spec.sources[0].path.write_text("// changed\n")
    after_source = check_digest(plan, NVCC, False)
    assert after_source != base
    (spec.include_dirs[0] / "helper.cuh").write_text("// a header the sources include\n")
    assert check_digest(plan, NVCC, False) != after_source


class _FakeNinja:
    """Stands in for run_ninja: writes `log` as the build log and counts the compiles."""

    def __init__(self, log: str) -> None:
        self.log = log
        self.compiled: list[str] = []

    def __call__(self, plan, folder, output, compile_only=False, verbose=False, quiet=False):
        assert compile_only and quiet and plan.spec.sources[0].flags[-2:] == ("-Xptxas", "-v")
        if self.log == "error":
            raise BuildError("building CUDA module 'quant' failed:\nerror: expected ';'")
        self.compiled.append(plan.spec.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "build.log").write_text(self.log)
        return 0.0


def _fake_check(tmp_path, monkeypatch, log: str):
    spec = _spec_with_two_sources(tmp_path)
    ninja = _FakeNinja(log)
    monkeypatch.setattr(compile_check, "all_specs", lambda: {"quant": spec})
    monkeypatch.setattr(compile_check, "_toolkit_without_torch_cuda",
                        lambda: _fake_toolkit(tmp_path))
    monkeypatch.setattr(compile_check, "nvcc_version_text", lambda nvcc: NVCC)
    monkeypatch.setattr(compile_check, "run_ninja", ninja)
    monkeypatch.delenv(compile_check.SKIP_VARIABLE, raising=False)
    return spec, ninja


def test_compile_check_compiles_again_only_when_something_changed(
        tmp_path, monkeypatch, isolated_cache, capsys):
    spec, ninja = _fake_check(tmp_path, monkeypatch, PTXAS_LOG)
    assert compile_check.main([]) == 0 and ninja.compiled == ["quant"]
    out = capsys.readouterr().out
    assert "quant: 2 kernels, at most 40 registers" in out and "(compiled in" in out
    assert "_Z4fastPf" not in out  # one line per module; the kernels with -v
    assert (isolated_cache / "compile_check" / "quant-sm90a.json").is_file()
    assert compile_check.main(["-v"]) == 0 and ninja.compiled == ["quant"]
    out = capsys.readouterr().out
    assert "(unchanged since it passed)" in out and "_Z4fastPf" in out
    assert compile_check.main(["--arch", "10.0a"]) == 0 and len(ninja.compiled) == 2
    spec.sources[1].path.write_text("// edited\n")
    assert compile_check.main([]) == 0 and len(ninja.compiled) == 3
    assert compile_check.main([]) == 0 and len(ninja.compiled) == 3
    assert compile_check.main(["--force"]) == 0 and len(ninja.compiled) == 4


@pytest.mark.parametrize("log, message", [(SPILLING_LOG, "register spills in _Z4fastPf"),
                                          ("error", "quant: FAILED")])
def test_compile_check_fails_and_stamps_nothing(tmp_path, monkeypatch, isolated_cache, capsys,
                                                log, message):
    _, ninja = _fake_check(tmp_path, monkeypatch, log)
    assert compile_check.main([]) == 1
    out = capsys.readouterr().out
    assert message in out and "compile check FAILED: quant" in out
    assert not (isolated_cache / "compile_check" / "quant-sm90a.json").exists()
    ninja.log = PTXAS_LOG
    assert compile_check.main([]) == 0 and ninja.compiled[-1] == "quant"


def test_compile_check_can_be_skipped(monkeypatch, capsys):
    monkeypatch.setenv(compile_check.SKIP_VARIABLE, "1")
    monkeypatch.setattr(compile_check, "_toolkit_without_torch_cuda",
                        lambda: pytest.fail("the skipped check looked for nvcc"))
    assert compile_check.main([]) == 0
    assert "skipped (FUSEINFER_SKIP_COMPILE_CHECK=1)" in capsys.readouterr().out


def test_check_digest_tracks_the_host_compiler_and_nvcc_variables(tmp_path, monkeypatch):
    """A host-compiler upgrade or NVCC_APPEND_FLAGS changes what nvcc builds: a new digest."""
    plan = BuildPlan(spec=_spec_with_two_sources(tmp_path), toolkit=_fake_toolkit(tmp_path),
                     archs=("9.0a",))
    compiler = tmp_path / "fake-cxx"
    compiler.write_text("#!/bin/sh\necho 'fake c++ 12.1'\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("NVCC_CCBIN", str(compiler))
    monkeypatch.delenv("NVCC_APPEND_FLAGS", raising=False)
    base = check_digest(plan, NVCC, False)
    compiler.write_text("#!/bin/sh\necho 'fake c++ 14.2'\n")
    upgraded = check_digest(plan, NVCC, False)
    assert upgraded != base
    monkeypatch.setenv("NVCC_APPEND_FLAGS", "-DEXTRA")
    assert check_digest(plan, NVCC, False) not in (base, upgraded)
