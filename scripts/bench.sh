#!/usr/bin/env bash
# Set up (see setup_env.sh) and run the main job: every GPU kernel suite (norm, rope,
# attention, ...) at a small representative shape set, timed against the device ceilings
# and the baselines in the same run, then one summary table (`fuseinfer bench all --quick`;
# a few minutes on an H200 once the kernels are built). Nothing is recorded (`fuseinfer bench
# <suite> --record` records a suite's full set). With no GPU it says so in one line,
# generates a few tokens with the bundled tiny model on the CPU instead, and exits 0.
# Extra arguments go to `fuseinfer bench all --quick` (e.g. --suites norm rope --json out.json).
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
fuseinfer bench all --quick "$@"
