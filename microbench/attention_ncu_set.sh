#!/usr/bin/env bash
# The attention kernels the open targets are about, each under Nsight Compute
# (microbench/attention_ncu.py), into one JSON list: $OUT/attention_ncu.json. Run on the
# GPU machine after device_run.sh has set up the environment (wheels, caches), e.g.
#   bash microbench/device_run.sh && bash microbench/attention_ncu_set.sh
# Each case gets NCU_TIMEOUT seconds (default 120); a case that fails prints why and the
# next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/python:/tmp/site:${PYTHONPATH:-}
# the caches device_run.sh restored (the CUDA decode module takes minutes to build)
export FUSEINFER_CACHE_DIR=${FUSEINFER_CACHE_DIR:-/tmp/fuseinfer-cache} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
OUT=${OUT:-/tmp/fuseinfer-out}
JSON=$OUT/attention_ncu.json
T=${NCU_TIMEOUT:-120}
run() { echo "=== $*"; timeout "$T" python3 microbench/attention_ncu.py "$@" --json "$JSON" || echo "(rc=$?)"; }
# FP8 decode (target 1.7x bf16): the CUDA kernel and the Triton rule at Llama-3-8B 64x4k,
# and the bf16 Triton rule beside them
run decode Llama-3-8B 64x4096 --cache fp8 --variant "cuda w4 s4"
run decode Llama-3-8B 64x4096 --cache fp8 --variant "$(python3 microbench/attention_ncu.py decode Llama-3-8B 64x4096 --cache fp8 --list | head -1)"
run decode Llama-3-8B 64x4096 --variant "$(python3 microbench/attention_ncu.py decode Llama-3-8B 64x4096 --list | head -1)"
# head_dim-64 prefill (target 1.1x SDPA): the portable kernel and the sm_90a kernel at 4x2k
run prefill GPT-OSS 4x2k --variant portable
run prefill GPT-OSS 4x2k --variant "sm90a m128 n128 s4 persistent"
run prefill GPT-OSS 4x2k --variant "sm90a m192 n128 s2 pingpong persistent"
