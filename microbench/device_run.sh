#!/usr/bin/env bash
# Everything that needs a GPU, in one go, on a freshly lent machine:
#   microbench/device_run.sh STEP...     steps: tests aot tune bench bench-quick tune-rope bench-rope
#                                        tests-attn tune-attn bench-attn bench-attn-quick
#                                        tests-runtime bench-runtime bench-runtime-quick serve
#                                        profile-runtime latency-quick offline-quick
# Installs the wheels carried in .whl/, restores a carried JIT cache (.devcache/), runs the
# steps and leaves at most 8 files in $OUT: logs.tgz, the run and recorded JSON, the tuned
# table, the tuning log, the ceilings and the JIT cache for the next call.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/fuseinfer-out}
LOGS=/tmp/fuseinfer-logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 FUSEINFER_CACHE_DIR=${FUSEINFER_CACHE_DIR:-/tmp/fuseinfer-cache}
cd "$REPO"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$REPO/python:/tmp/site:${PYTHONPATH:-}
if [ -f .devcache/jit-cache.tgz ]; then
  mkdir -p "$FUSEINFER_CACHE_DIR" && tar -xzf .devcache/jit-cache.tgz -C "$FUSEINFER_CACHE_DIR"
fi

step() {  # step NAME CMD...: run, log to $LOGS/NAME.log, print the tail
  local name=$1; shift
  local start=$SECONDS
  echo "=== $name: $*"
  "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - start)) s"
  tail -n "${TAIL:-15}" "$LOGS/$name.log"
  return $rc
}

PROBE='import torch, fuseinfer
x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16); w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
y = fuseinfer.ops.rmsnorm(x, w); ref = fuseinfer.ops.norm.reference_rmsnorm(x, w, 1e-6)
err = ((y.float() - ref).norm() / ref.norm()).item(); assert err < 1e-2, err
m = fuseinfer.jit.loaded_modules()["norm"]; print("ORIGIN", m.origin, m.path, "rel err", err)
assert m.origin == "prebuilt", m.origin'

start_aot() {  # both AOT builds in the background, on the CPU, while the GPU works
  (FUSEINFER_AOT=1 FUSEINFER_AOT_ARCHS=9.0a python3 -m pip install --no-deps --no-index \
     --no-build-isolation -t /tmp/aot-setup "$REPO" >"$LOGS/aot_setup_build.log" 2>&1
   echo $? >/tmp/aot_setup.rc) &
  ( (cmake -S "$REPO" -B /tmp/cmake-build -G Ninja -DFUSEINFER_ARCHS=9.0a \
       -DFUSEINFER_OUT_DIR=/tmp/cmake-prebuilt -DPython3_EXECUTABLE="$(command -v python3)" \
       && cmake --build /tmp/cmake-build) >"$LOGS/aot_cmake_build.log" 2>&1
    echo $? >/tmp/aot_cmake.rc) &
}

check_aot() {
  wait
  echo "setup.py AOT build rc=$(cat /tmp/aot_setup.rc), CMake build rc=$(cat /tmp/aot_cmake.rc)"
  tail -n 5 "$LOGS/aot_setup_build.log" "$LOGS/aot_cmake_build.log"
  step aot_setup_load env FUSEINFER_CACHE_DIR="$(mktemp -d)" \
    PYTHONPATH=/tmp/aot-setup:/tmp/site python3 -c "$PROBE"
  step aot_cmake_load env FUSEINFER_CACHE_DIR="$(mktemp -d)" \
    FUSEINFER_PREBUILT_DIR=/tmp/cmake-prebuilt python3 -c "$PROBE"
}

serve_bench() {  # fuseinfer serve on dummy Qwen3-0.6B, the two serving workloads, SIGTERM
  python3 -m fuseinfer.cli serve --model qwen3-0.6b --load-format dummy --port 30000 \
    ${SERVE_ARGS:-} >"$LOGS/serve.log" 2>&1 &
  local pid=$! rec=(); [ "${SERVE_RECORD:-1}" = 1 ] && rec=(--record)
  python3 - <<'PY' || { echo "server did not come up"; tail -n 40 "$LOGS/serve.log"; kill $pid; return 1; }
import time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen("http://127.0.0.1:30000/health", timeout=2); break
    except Exception:
        time.sleep(1)
else:
    raise SystemExit(1)
PY
  local sv=(python3 -m fuseinfer.cli bench serving --base-url http://127.0.0.1:30000)
  step serving_warmup timeout 120 "${sv[@]}" --num-prompts 16 --random-input 256 --random-output 16
  TAIL=30 step serving_rate_inf timeout 120 "${sv[@]}" --num-prompts 50 --random-input 256 \
    --random-output 64 "${rec[@]}" --json "$OUT/serving_rate_inf.json"
  local cont=(); [ ${#rec[@]} -gt 0 ] && cont=(--continue-run)
  TAIL=30 step serving_c64 timeout 240 "${sv[@]}" --num-prompts 256 --random-input 1024 \
    --random-output 256 --max-concurrency 64 "${rec[@]}" "${cont[@]}" --json "$OUT/serving_c64.json"
  kill -TERM $pid; wait $pid; echo "fuseinfer serve exit code after SIGTERM: $?"
  tail -n 20 "$LOGS/serve.log"
  [ ${#rec[@]} -gt 0 ] && cp "microbench/results/$KEY/serving.json" "$OUT/results_serving_$KEY.json"
  return 0
}

{ nvidia-smi; python3 -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; } 2>&1 | tee "$LOGS/machine.log"
KEY=$(python3 -c 'from fuseinfer.dispatch import current_identity, gpu_key; print(gpu_key(current_identity()))')
for s in "$@"; do [ "$s" = aot ] && start_aot; done
step jit_first_use python3 -m fuseinfer.cli bench norm --shapes 8x4096 --baselines
step info python3 -m fuseinfer.cli info

for s in "$@"; do
  case $s in
    tests) TAIL=40 step gpu_tests python3 -m pytest -m gpu tests/gpu -q -rf -p no:cacheprovider ;;
    aot) check_aot ;;
    tune) TAIL=30 step tune python3 -m fuseinfer.cli tune norm --log "$OUT/tune_log.json"
          cp "autotune_configs/$KEY.json" "$OUT/table_$KEY.json" ;;
    bench|bench-quick)
      step ceilings python3 -m fuseinfer.cli bench ceilings && cp "$FUSEINFER_CACHE_DIR"/ceilings/*.json "$OUT/ceilings.json"
      extra=(); [ "$s" = bench-quick ] && extra=(--tokens 1 128 8192 --hidden 4096 7168)
      TAIL=110 step bench_norm python3 -m fuseinfer.cli bench norm --record --json "$OUT/norm_run.json" "${extra[@]}"
      cp "microbench/results/$KEY/norm.json" "$OUT/results_norm_$KEY.json" ;;
    tune-rope) TAIL=12 step tune_rope python3 -m fuseinfer.cli tune rope --log "$OUT/tune_rope_log.json"
          cp "autotune_configs/$KEY.json" "$OUT/table_$KEY.json" ;;
    bench-rope)
      TAIL=60 step bench_rope python3 -m fuseinfer.cli bench rope --record --json "$OUT/rope_run.json"
      cp "microbench/results/$KEY/rope.json" "$OUT/results_rope_$KEY.json" ;;
    tune-attn) TAIL=20 step tune_attn python3 -m fuseinfer.cli tune attention --kinds ${TUNE_ATTN_KINDS:-prefill decode} --log "$OUT/tune_attn_log.json"
          cp "autotune_configs/$KEY.json" "$OUT/table_$KEY.json" ;;
    tests-attn) TAIL=40 step gpu_tests_attn python3 -m pytest -m gpu tests/gpu/test_attention_gpu.py \
                  -q -rf -x -p no:cacheprovider ;;
    bench-attn|bench-attn-quick)
      [ -f "$OUT/ceilings.json" ] || { step ceilings python3 -m fuseinfer.cli bench ceilings \
        && cp "$FUSEINFER_CACHE_DIR"/ceilings/*.json "$OUT/ceilings.json"; }
      extra=(${ATTN_ARGS:-}); rec=(--record ${ATTN_RECORD:-})
      [ "$s" = bench-attn-quick ] && { extra=(${ATTN_QUICK:---batches 1 64 --lengths 4096 16384 --prefill 1x4k --models Llama-3-8B GPT-OSS}); rec=(); }
      TAIL=90 step bench_attn python3 -m fuseinfer.cli bench attention "${rec[@]}" --json "$OUT/attention_run.json" "${extra[@]}"
      [ "$s" = bench-attn ] && cp "microbench/results/$KEY/attention.json" "$OUT/results_attention_$KEY.json" ;;
    tests-runtime) TAIL=40 step gpu_tests_runtime timeout 420 python3 -m pytest -m gpu \
                     tests/gpu/test_runtime_gpu.py tests/gpu/test_mlp_qknorm_gpu.py ${EXTRA_GPU_TESTS:-} -q -rf \
                     -p no:cacheprovider ;;
    bench-runtime|bench-runtime-quick)
      model=(--model qwen3-0.6b --load-format dummy); rec=(--record); abl=(--ablate all)
      [ "$s" = bench-runtime-quick ] && { rec=(); abl=(${RUNTIME_ABLATE:-}); }
      TAIL=30 step bench_offline timeout 540 python3 -m fuseinfer.cli bench offline "${model[@]}" \
        "${rec[@]}" ${abl[@]:+"${abl[@]}"} --json "$OUT/offline_run.json"
      cont=(); [ "$s" = bench-runtime ] && cont=(--continue-run)
      TAIL=10 step bench_latency timeout 240 python3 -m fuseinfer.cli bench latency "${model[@]}" \
        "${rec[@]}" "${cont[@]}" --ablate cuda-graph overlap-schedule small-batch-gemv pdl
      [ "$s" = bench-runtime ] && cp "microbench/results/$KEY/runtime.json" "$OUT/results_runtime_$KEY.json" ;;
    latency-quick) TAIL=6 step bench_latency_quick timeout 120 python3 -m fuseinfer.cli bench \
                     latency --model qwen3-0.6b --load-format dummy ${RUNTIME_ARGS:-} ;;
    offline-quick) TAIL=6 step bench_offline_quick timeout 200 python3 -m fuseinfer.cli bench \
                     offline --model qwen3-0.6b --load-format dummy ${RUNTIME_ARGS:-} ;;
    serve) serve_bench ;;
    profile-runtime) TAIL=120 step profile_runtime timeout 300 python3 microbench/profile_runtime.py ${PROFILE_ARGS:-} ;;
    *) echo "unknown step $s" ;;
  esac
done

tar -czf "$OUT/jit-cache.tgz" -C "$FUSEINFER_CACHE_DIR" jit 2>/dev/null
tar -czf "$OUT/logs.tgz" -C "$LOGS" .
ls -la "$OUT"
