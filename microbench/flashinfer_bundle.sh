#!/usr/bin/env bash
# Build the trimmed FlashInfer baseline bundle that travels to the GPU machine (which
# cannot install from a registry) inside the 64 MiB carry:
#   .whl/flashinfer.tar.xz  the importable tree, packed: the flashinfer modules the compared
#                         ops import and the headers/sources their JIT compiles (see
#                         docs/baselines.md); ~60 MiB unpacked would not fit the carry
#                         beside the project's other wheels and JIT cache, ~6 MiB packed does
#   .whl/apache_tvm_ffi-*.whl   installed there with the project's other wheels
#   BUNDLE.json (in the tree, and printed) versions, sha256 of the source wheels, files, size
# then checks on this CPU machine that the tree imports with nothing but tvm-ffi, torch and
# the packages the GPU machine has, and that every source the JIT would compile
# preprocesses with nvcc against the trimmed tree.
# Scratch (the 62 MB source wheel, its unpacked 420 MB, the check's site, the unpacked
# bundle) goes to $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
FLASHINFER=flashinfer-python==0.7.2.post1
TVM_FFI=apache-tvm-ffi==0.1.15.post2
WORK=${FLASHINFER_BUNDLE_WORK:-/tmp/flashinfer-bundle}
DEST=$WORK/bundle
PACKED=.whl/flashinfer.tar.xz
PY=${PY:-.venv/bin/python}
HELPER=microbench/flashinfer_bundle.py
export FLASHINFER_CUDA_ARCH_LIST=${FLASHINFER_CUDA_ARCH_LIST:-9.0a}
# the toolkit folder itself, as on the GPU machine (flashinfer's host-compiler commands take
# its include folder from here; a bare nvcc wrapper on PATH would give /usr/local)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$WORK/wheels" "$WORK/local" .whl

download() {  # download DIR PYVER SPEC...: binary wheels for CPython PYVER on x86-64 Linux
  local dir=$1 pyver=$2; shift 2
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dir" "$@"
}

# 1. the wheels: tvm-ffi for the GPU machine's 3.12 into .whl/ (one version only: the
# device install takes .whl/*.whl at once); flashinfer and the local check's wheels to $WORK
rm -f $(ls .whl/apache_tvm_ffi-*.whl 2>/dev/null | grep -v "${TVM_FFI#*==}-cp312") 
download .whl 3.12 "$TVM_FFI"
download "$WORK/wheels" 3.12 "$FLASHINFER"
LOCAL_PY=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
download "$WORK/local" "$LOCAL_PY" "$TVM_FFI" einops nvidia-ml-py tabulate
FI_WHEEL=$(ls "$WORK"/wheels/flashinfer_python-"${FLASHINFER#*==}"-*.whl)
TVM_WHEEL=$(ls .whl/apache_tvm_ffi-"${TVM_FFI#*==}"-cp312-*.whl)

# 2. unpack the whole wheel once; the trimmed tree is cut from it
if [ ! -f "$WORK/full/.unpacked-${FLASHINFER#*==}" ]; then
  rm -rf "$WORK/full" && mkdir -p "$WORK/full"
  (cd "$WORK/full" && unzip -q "$FI_WHEEL" && touch ".unpacked-${FLASHINFER#*==}")
fi

# 3. an isolated site for the checks: tvm-ffi (local CPython), torch and its requirements,
# and the packages the GPU machine has (requests, tqdm, einops, nvidia-ml-py, packaging,
# click, tabulate, numpy, ninja, triton). Run with `python -S`: nothing else is on the path.
rm -rf "$WORK/site" && mkdir -p "$WORK/site"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WORK"/local/*.whl
"$PY" - "$WORK/site" <<'PY'
import importlib.util, os, sys
from pathlib import Path
for name in ("torch torchgen functorch typing_extensions filelock fsspec sympy mpmath networkx "
             "jinja2 markupsafe numpy tqdm click ninja triton requests urllib3 idna "
             "charset_normalizer certifi packaging").split():
    origin = Path(importlib.util.find_spec(name).origin)
    src = origin.parent if origin.name == "__init__.py" else origin
    os.symlink(src, Path(sys.argv[1]) / src.name)
    libs = src.parent / f"{name}.libs"  # numpy's bundled shared libraries
    if libs.is_dir():
        os.symlink(libs, Path(sys.argv[1]) / libs.name)
PY
isolated() {  # isolated TREE ARGS...: python -S with TREE and the check site only
  local tree=$1; shift
  PYTHONPATH="$tree:$WORK/site" "$PY" -S "$@"
}

# 4. the compile commands of the compared ops, from the whole wheel; trim to their closure
FLASHINFER_WORKSPACE_BASE="$WORK/ws-full" isolated "$WORK/full" "$HELPER" specs "$WORK/cmds-full.json"
"$PY" "$HELPER" trim "$WORK/full" "$DEST" "$WORK/cmds-full.json"

# 5. checks: the trimmed tree imports, writes its JIT specs, and every source preprocesses
isolated "$DEST" -c '
import sys, flashinfer, flashinfer.norm, flashinfer.rope, flashinfer.decode, flashinfer.prefill, flashinfer.activation, flashinfer.page, flashinfer.gemm, flashinfer.fused_moe
assert callable(flashinfer.gemm.fp8_blockscale_gemm_sm90) and callable(flashinfer.gemm.bmm_fp8)
assert callable(flashinfer.fused_moe.cutlass_fused_moe) and callable(flashinfer.fused_moe.cutlass_fused_moe_workspace_size)
bad = [m for m, v in sys.modules.items() if m.startswith("flashinfer") and getattr(v, "__file__", None) and sys.argv[1] not in v.__file__]
assert not bad, bad
print("import ok:", flashinfer.__version__, flashinfer.__file__)' "$(cd "$DEST" && pwd)"
FLASHINFER_WORKSPACE_BASE="$WORK/ws-trim" isolated "$DEST" "$HELPER" specs "$WORK/cmds-trim.json"
"$PY" "$HELPER" deps "$WORK/cmds-trim.json" "$WORK/deps-trim.json" "$DEST" "$WORK/full"

# 6. record what was built, and pack it (xz: the device unpacks with tar or Python alone)
"$PY" "$HELPER" manifest "$DEST" "$DEST/BUNDLE.json" "$FI_WHEEL" "$TVM_WHEEL"
rm -rf .whl/flashinfer  # the unpacked layout of earlier versions of this script
tar -C "$DEST" -cf - . | xz -T0 -6 > "$PACKED.tmp" && mv "$PACKED.tmp" "$PACKED"
cat "$DEST/BUNDLE.json"
"$PY" - "$DEST/BUNDLE.json" "$TVM_WHEEL" "$PACKED" <<'PY'
import json, os, sys
from pathlib import Path
mib = lambda n: f"{n / 2**20:.1f} MiB"
bundle = json.loads(Path(sys.argv[1]).read_text())
carried = sum(p.stat().st_size for p in Path(".whl").rglob("*") if p.is_file())
print(f"bundle: {bundle['files']} files, {mib(bundle['bytes'])} unpacked, "
      f"{mib(os.path.getsize(sys.argv[3]))} as {sys.argv[3]}; "
      f"{mib(os.path.getsize(sys.argv[2]))} {sys.argv[2]}; all of .whl: {mib(carried)}")
PY
