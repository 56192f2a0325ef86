#!/usr/bin/env bash
# Set up (see setup_env.sh) and run the norm microbenchmark on the local GPU: kernels built
# on first use, compared with torch eager, torch.compile and liger-kernel (if installed).
# With no GPU, `fuseinfer bench norm` says so in one line and exits with 2 (as every
# GPU-only bench and tune command does; `fuseinfer bench --list` shows which need one).
# Extra arguments go to `fuseinfer bench norm` (e.g. --hidden 4096 --tokens 1 128 --json out.json).
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
fuseinfer bench norm "$@"
