#!/usr/bin/env bash
# Set up (see setup_env.sh) and run the CPU test suite; with nvcc present, first check that
# every CUDA module compiles (no GPU needed). Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"

if python -c "from fuseinfer.jit.compile_check import _toolkit_without_torch_cuda as t; t()" \
    >/dev/null 2>&1; then
  python -m fuseinfer.jit.compile_check
else
  echo "test: nvcc not found, skipping the CUDA compile check (the CPU suite still runs)"
fi
python -m pytest -q "$@"
