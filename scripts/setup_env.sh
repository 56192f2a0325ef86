# Sourced by scripts/test.sh and scripts/bench.sh: a virtual environment in .venv that
# sees an already-installed torch (system site-packages) or else gets a CPU build, and
# fuseinfer installed in editable mode. Nothing is compiled here.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FUSEINFER_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if python -c "import torch" >/dev/null 2>&1; then
  echo "setup: using installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  # A CPU build: from a local wheel source if pip is configured with one (no download),
  # else from the PyTorch CPU index. A bare `pip install torch` would pull CUDA wheels.
  CPU_TORCH=${FUSEINFER_CPU_TORCH:-2.13.0}
  echo "setup: no torch found; installing a CPU build"
  WHEELS=$(mktemp -d)
  if pip download -q --no-index --no-deps -d "$WHEELS" "torch==$CPU_TORCH" 2>/dev/null \
      && ls "$WHEELS"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    pip install -q "$WHEELS"/torch-*+cpu-*.whl  # its small dependencies come from the index
  else
    pip install -q --timeout 60 --index-url https://download.pytorch.org/whl/cpu torch
  fi
  rm -rf "$WHEELS"
fi

# matplotlib (the plot extra): the CPU suite draws the benchmark plots; pytest_benchmark:
# the host-side benchmarks (tests/host_bench) run in the CPU suite.
if ! python -c "import fuseinfer, pytest, pytest_benchmark, triton, transformers, safetensors, tokenizers, fastapi, uvicorn, openai, matplotlib" >/dev/null 2>&1 || [ "${FUSEINFER_REINSTALL:-0}" = 1 ]; then
  echo "setup: installing fuseinfer (editable) and test tools"
  pip install -q -e "$ROOT[test,plot]"
fi
# CUTLASS headers for the CUDA build and the compile check; --no-deps skips the Python
# tooling of the package (which would pull CUDA Python packages).
if ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('cutlass_library') is None)"; then
  pip install -q --no-deps "nvidia-cutlass>=3.9"
fi
cd "$ROOT"
