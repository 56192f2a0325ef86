#!/usr/bin/env bash
# Set up (see setup_env.sh) and run the CPU test suite; with nvcc present, first check that
# every CUDA module compiles (no GPU needed); after the suite, compile every Triton kernel
# launch it ran in the interpreter for sm_90a (fuseinfer.jit.triton_compile_check: the
# interpreter does not type-check), then the Gluon kernels, which it cannot run
# (fuseinfer.ops.attention.prefill_hopper_compile_check). Extra arguments go to pytest.
#
# The compile check remembers each module that passed (a stamp under the fuseinfer cache
# dir, keyed by its sources, flags, nvcc, torch and CUTLASS), so with nothing changed it
# takes seconds; `python -m fuseinfer.jit.compile_check -v` prints every kernel's
# registers. FUSEINFER_SKIP_COMPILE_CHECK=1 skips both compile checks.
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"

if [ "${FUSEINFER_SKIP_COMPILE_CHECK:-0}" = 1 ]; then
  echo "test: FUSEINFER_SKIP_COMPILE_CHECK=1, skipping the CUDA compile check"
elif python -c "from fuseinfer.jit.compile_check import _toolkit_without_torch_cuda as t; t()" \
    >/dev/null 2>&1; then
  # --quick: a representative sample of the CUTLASS GEMM menu (the GPU build compiles all);
  # the Blackwell GEMM path is compile-checked too, though no Blackwell GPU runs it here.
  python -m fuseinfer.jit.compile_check --quick
  python -m fuseinfer.jit.compile_check --quick --arch 10.0a --module gemm
else
  echo "test: nvcc not found, skipping the CUDA compile check (the CPU suite still runs)"
fi
status=0
# the interpreted Triton launches, recorded (tests/conftest.py) and then compiled for sm_90a
launches=$(mktemp)
FUSEINFER_TRITON_LAUNCH_LOG=$launches python -m pytest -q "$@" || status=$?
if [ "$status" = 0 ] && [ -s "$launches" ] && [ "${FUSEINFER_SKIP_COMPILE_CHECK:-0}" != 1 ]; then
  env -u TRITON_INTERPRET python -m fuseinfer.jit.triton_compile_check "$launches" \
    --arch 9.0a || status=$?
fi
rm -f "$launches"
# the Gluon kernels (the interpreter cannot run them) compiled for sm_90a with this Triton
if [ "$status" = 0 ] && [ "${FUSEINFER_SKIP_COMPILE_CHECK:-0}" != 1 ]; then
  env -u TRITON_INTERPRET python -m fuseinfer.ops.attention.prefill_hopper_compile_check || status=$?
fi
echo "test: the deselected tests are the GPU suite (tests/gpu/, marker 'gpu'): run them" \
  "on a machine with a CUDA GPU with 'python -m pytest -m gpu'"
exit "$status"
