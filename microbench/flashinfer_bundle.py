"""Trim an unpacked flashinfer wheel to what the same-run baseline ops need.

Called by microbench/flashinfer_bundle.sh; each subcommand is one step:
  specs OUT.json          (with flashinfer importable) the compile commands flashinfer's
                          own JIT would run for the compared ops, for FLASHINFER_CUDA_ARCH_LIST
  trim FULL DEST CMDS     copy from the unpacked wheel FULL into DEST: the Python modules the
                          ops import, and from data/ only the headers and sources their compile
                          commands reach through #include
  deps CMDS OUT DEST FULL `nvcc -M` on every command: the headers the preprocessor really
                          opens; fails on one that DEST lacks and FULL has
  manifest DEST OUT WHEEL...  BUNDLE.json: versions, sha256 of the wheels, file count, size
"""

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The modules whose function bodies run on the compared ops' path (utils and api_logging
# wrap every op call; gemm.gemm_base holds the FP8 GEMMs, gemm.routergemm tinygemm_bf16,
# bmm_fp8 runs through the autotuner; fused_moe.core holds cutlass_fused_moe, jit.fused_moe
# its module's generator; quantization.fp4_quantization holds fp4_quantize and its module's
# generator, and fp4_quantization is the import path the fp4-quant baseline uses): their
# in-function imports are followed too. Everywhere else only module-level imports are
# (those run at `import flashinfer`); the lazy imports of other features (MoE, CuTe DSL
# kernels) are not.
OP_MODULES = tuple("flashinfer." + m for m in (
    "norm", "rope", "decode", "prefill", "activation", "page", "utils", "api_logging",
    "gemm.gemm_base", "gemm.routergemm", "autotuner", "jit.core", "jit.cpp_ext", "jit.env",
    "jit.attention", "jit.norm", "jit.rope", "jit.page", "jit.activation", "jit.gemm",
    "jit.utils", "fused_moe.core", "jit.fused_moe", "fp4_quantization", "quantization",
    "quantization.fp4_quantization"))
# Headers compiled at run time rather than by the JIT build: fp8_blockscale_gemm_sm90
# generates its DeepGEMM-style kernels per shape with NVRTC from this folder, so no compile
# command reaches it.
RUNTIME_HEADER_DIRS = ("nv_internal/tensorrt_llm/deep_gemm",)
# The trimmed fused-MoE module (python/fuseinfer/bench/flashinfer_moe_build.py) compiles
# edited copies of these, which it writes from the originals at run time: no compile
# command names the originals, so they are kept by name.
MOE_BUILD = Path(__file__).resolve().parents[1] / "python/fuseinfer/bench/flashinfer_moe_build.py"


def moe_build():
    """bench/flashinfer_moe_build.py, loaded by path (no fuseinfer import: the specs step
    runs in the isolated site, which has flashinfer but not fuseinfer)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("flashinfer_moe_build", MOE_BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
# CUTLASS spells some includes through a macro: CUDA_STD_HEADER(x) is <cuda/std/x>
MACRO_INCLUDE = re.compile(r'^\s*#\s*include\s+CUDA_STD_HEADER\(\s*([\w/.]+)\s*\)', re.M)


# ---- Python: the import closure -------------------------------------------------------

def module_file(root: Path, module: str) -> Path | None:
    path = root.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of one file, as absolute names;
    `from X import Y` yields both X and X.Y since Y may be a submodule."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top, nested = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = set()
            if isinstance(child, ast.Import):
                names = {a.name for a in child.names}
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                names = {base} | {f"{base}.{a.name}" for a in child.names}
            (nested if inside else top).update(names)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return top, nested


def python_closure(root: Path, seeds, follow_nested=OP_MODULES, package="flashinfer"):
    """Files of every `package` module reachable from seeds (and their parent packages)."""
    seen: dict[str, Path] = {}
    todo = list(seeds)
    while todo:
        module = todo.pop()
        if module in seen or module.split(".")[0] != package:
            continue
        path = module_file(root, module)
        if path is None:
            continue
        seen[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        top, nested = imports_of(module, path)
        todo += top
        if any(module == m or module.startswith(m + ".") for m in follow_nested):
            todo += nested
    return set(seen.values())


# ---- C++: the include closure ---------------------------------------------------------

def include_dirs(command: str) -> list[Path]:
    """The command's -I/-isystem folders, then the toolkit's own, which nvcc adds: toolkit
    headers (cooperative_groups, cuda_fp16) include <cuda/std/...>, which must resolve in
    the vendored CCCL, since the vendored and the toolkit's CCCL do not mix."""
    args, dirs = shlex.split(command), []
    for i, arg in enumerate(args):
        if arg.startswith("-I") and len(arg) > 2:
            dirs.append(Path(arg[2:]))
        elif arg.startswith("-isystem"):
            dirs.append(Path(arg.split(None, 1)[1] if " " in arg else args[i + 1]))
    toolkit = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda").resolve()
    return dirs + [toolkit / "targets" / "x86_64-linux" / "include", toolkit / "include"]


def header_closure(sources, dirs) -> tuple[set[Path], set[str]]:
    """Every file reachable from sources through #include, searched the way the compiler
    does (quoted: the including file's folder first). Conditional includes are followed
    too, so the set covers any arch or macro. Returns (files, names found nowhere)."""
    seen, missing, todo = set(), set(), [Path(s).resolve() for s in sources]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        text = path.read_text(errors="replace")
        includes = INCLUDE.findall(text) + [("<", f"cuda/std/{name}")
                                            for name in MACRO_INCLUDE.findall(text)]
        for quote, name in includes:
            candidates = ([path.parent / name] if quote == '"' else []) + [d / name for d in dirs]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                missing.add(name)
            else:
                todo.append(hit.resolve())
    return seen, missing


# ---- steps ----------------------------------------------------------------------------

def cmd_specs(out: str) -> None:
    """The compared ops' JIT specs, as flashinfer would compile them (bf16, head_dim 128;
    the sources do not depend on dtype or head_dim, only the generated config does)."""
    import torch
    from flashinfer.jit.activation import gen_act_and_mul_module
    from flashinfer.jit.attention import gen_batch_decode_module, gen_batch_prefill_module
    from flashinfer.jit.attention.modules import _gen_batch_prefill_independent_paged_module
    from flashinfer.jit.gemm import gen_fp8_blockscale_gemm_sm90_module, gen_gemm_module
    from flashinfer.jit.norm import gen_norm_module
    from flashinfer.jit.page import gen_page_module
    from flashinfer.jit.rope import gen_rope_module
    from flashinfer.jit.tinygemm2 import gen_tinygemm2_module
    from flashinfer.quantization.fp4_quantization import gen_fp4_quantization_sm90_module

    bf16, i32 = torch.bfloat16, torch.int32
    specs = {
        "norm": gen_norm_module(),
        "rope": gen_rope_module(),
        "page": gen_page_module(),
        "silu_and_mul": gen_act_and_mul_module("silu"),
        "batch_decode": gen_batch_decode_module(
            bf16, bf16, bf16, i32, 128, 128, 0, False, False),
        # ragged and paged prefill are one module; FA2 (FA3 needs ~22 MB of CUTLASS/CuTe)
        "batch_prefill_fa2": gen_batch_prefill_module(
            "fa2", bf16, bf16, bf16, i32, 128, 128, 0, False, False, False),
        # the paged-only surface the paged prefill (and tensor-core decode) wrappers load,
        # with its own batch_prefill_paged*.cu sources
        "batch_prefill_paged_fa2": _gen_batch_prefill_independent_paged_module(
            "fa2", bf16, bf16, bf16, i32, 128, 128, 0, False, False, False),
        # bmm_fp8 (cuBLASLt) and the grouped GEMMs built with it in one module
        "gemm": gen_gemm_module(),
        # fp8_blockscale_gemm_sm90: the host side; its kernels are NVRTC-compiled per shape
        "fp8_blockscale_gemm_sm90": gen_fp8_blockscale_gemm_sm90_module(),
        # cutlass_fused_moe on SM90, trimmed to the bf16 and bf16 x fp8-block runners
        "fused_moe_90_trimmed": moe_build().trimmed_spec(),
        # fp4_quantize (NVFP4 16-element and MXFP4 32-element blocks) built for SM90
        "fp4_quantization_90": gen_fp4_quantization_sm90_module(),
        # tinygemm_bf16 (the small-M bf16 GEMM, SM90+): the gemm suite's baseline
        "tinygemm2": gen_tinygemm2_module(),
    }
    commands = {name: spec.get_compile_commands() for name, spec in specs.items()}
    Path(out).write_text(json.dumps(commands, indent=1))


def cmd_trim(full: str, dest: str, cmds_json: str) -> None:
    full_root, dest_root = Path(full).resolve(), Path(dest).resolve()
    keep = python_closure(full_root, ("flashinfer",) + OP_MODULES)
    # dist-info for the version lookups; not RECORD, which lists the whole wheel (1.3 MB)
    keep |= {p for p in full_root.glob("flashinfer_python-*.dist-info/**/*")
             if p.is_file() and p.name != "RECORD"}
    commands = [c for cs in json.loads(Path(cmds_json).read_text()).values() for c in cs]
    csrc = full_root / "flashinfer" / "data" / "csrc"
    # the JIT copies these sources and fills these templates into its generated folder
    copied = {csrc / Path(c["file"]).name for c in commands}
    keep |= {p for p in copied if p.is_file()}
    keep |= {p for ext in ("*.h", "*.cuh", "*.jinja") for p in csrc.glob(ext)}
    keep |= {p for d in RUNTIME_HEADER_DIRS for p in (csrc / d).rglob("*") if p.is_file()}
    build = moe_build()
    keep |= {csrc / build.INSTANTIATION, csrc / build.BINDING}
    for c in commands:
        files, _ = header_closure([c["file"]], include_dirs(c["command"]))
        keep |= {f for f in files if f.is_relative_to(full_root / "flashinfer")}
    if dest_root.exists():
        shutil.rmtree(dest_root)
    for path in sorted(keep):
        target = dest_root / path.relative_to(full_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    print(f"kept {len(keep)} files, {sum(p.stat().st_size for p in keep) / 2**20:.1f} MiB")


FATAL_MISSING = re.compile(r"fatal error: (\S+): No such file or directory")


def preprocess_deps(entry: dict, full_dirs: list[Path], stubs: Path):
    """One command as `nvcc -M`: (source, files opened, gaps, error). nvcc has no -MG, so a
    header it cannot find is looked up in the whole wheel: there, a gap in the bundle; else a
    toolkit header this machine's CUDA lacks (cuBLAS, cuRAND), stubbed empty and retried."""
    args = shlex.split(entry["command"])
    args = args[: args.index("-o")] + ["-isystem", str(stubs)]
    args[1] = "-M"
    gaps = []
    for _ in range(32):
        run = subprocess.run(args, capture_output=True, text=True)
        if run.returncode == 0:
            files = run.stdout.replace("\\\n", " ").split()[1:]
            return entry["file"], [f for f in files if not f.startswith(str(stubs))], gaps, ""
        missing = FATAL_MISSING.search(run.stderr)
        if missing is None:
            break
        name = missing.group(1)
        if any((d / name).is_file() for d in full_dirs):
            gaps.append(name)
            break
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).touch()
    return entry["file"], [], gaps, run.stderr[-1500:]


def cmd_deps(cmds_json: str, out: str, dest: str, full: str) -> None:
    """Fails if a source does not preprocess, or if a header it asks for is absent from
    the bundle DEST but present in the unpacked wheel FULL (a trimming gap). Headers found
    in neither come from the CUDA toolkit (cuBLAS, cuRAND, ...) and are only listed."""
    commands = [c for cs in json.loads(Path(cmds_json).read_text()).values() for c in cs]
    dest, full = str(Path(dest).resolve()), str(Path(full).resolve())
    dirs = {d for c in commands for d in include_dirs(c["command"])}
    full_dirs = sorted({Path(str(d).replace(dest, full)) for d in dirs})
    stubs = Path(out).with_suffix(".stubs")
    shutil.rmtree(stubs, ignore_errors=True)
    stubs.mkdir()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: preprocess_deps(c, full_dirs, stubs), commands))
    failed = {f: err for f, _, _, err in results if err}
    gaps = sorted({g for _, _, gs, _ in results for g in gs})
    opened = sorted({d for _, files, _, _ in results for d in files})
    missing = sorted(str(p.relative_to(stubs)) for p in stubs.rglob("*") if p.is_file())
    # a toolkit CCCL header opened means the vendored copy lacks it (the whole wheel opens none)
    gaps += [f for f in opened if "/include/cccl/" in f and not f.startswith(dest)]
    Path(out).write_text(json.dumps({"failed": failed, "gaps": gaps, "toolkit_headers": missing,
                                     "opened": opened}, indent=1))
    print(f"{len(commands)} sources preprocessed, {len(failed)} failed, {len(opened)} files "
          f"opened, missing from the bundle: {gaps or 'none'}; left to the toolkit: {missing}")
    for name, err in failed.items():
        print(f"FAILED {name}:\n{err}")
    sys.exit(1 if failed or gaps else 0)


def cmd_manifest(dest: str, out: str, *wheels: str) -> None:
    root = Path(dest)
    files = [p for p in root.rglob("*") if p.is_file()]
    versions = {}
    for meta in root.glob("*.dist-info/METADATA"):
        lines = meta.read_text().splitlines()[:3]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        versions[fields["Name"]] = fields["Version"]
    wheel_info = {Path(w).name: {"sha256": hashlib.sha256(Path(w).read_bytes()).hexdigest(),
                                 "bytes": Path(w).stat().st_size} for w in wheels}
    tvm = next(w for w in wheel_info if w.startswith("apache_tvm_ffi-"))
    versions["apache-tvm-ffi"] = tvm.split("-")[1]
    Path(out).write_text(json.dumps({
        "versions": versions, "source_wheels": wheel_info, "files": len(files),
        "bytes": sum(p.stat().st_size for p in files), "compared_ops": [
            "rmsnorm", "fused_add_rmsnorm", "gemma_rmsnorm", "gemma_fused_add_rmsnorm",
            "apply_rope_with_cos_sin_cache", "apply_rope_pos_ids_cos_sin_cache",
            "BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper (fa2)",
            "BatchPrefillWithRaggedKVCacheWrapper (fa2)", "append_paged_kv_cache",
            "silu_and_mul", "gemm.fp8_blockscale_gemm_sm90", "gemm.bmm_fp8 (cublas)",
            "gemm.tinygemm_bf16",
            "fused_moe.cutlass_fused_moe (sm90: trimmed module, bf16 and fp8 block scale)"]},
        indent=1) + "\n")


if __name__ == "__main__":
    steps = {"specs": cmd_specs, "trim": cmd_trim, "deps": cmd_deps, "manifest": cmd_manifest}
    steps[sys.argv[1]](*sys.argv[2:])
