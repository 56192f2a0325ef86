#!/usr/bin/env bash
# Everything that needs a GPU, in one go, on a freshly lent machine:
#   microbench/device_run.sh STEP...
# Steps (suites come from the bench registry: `fuseinfer bench --list`):
#   bench:SUITE      `fuseinfer bench SUITE`, with --record (RECORD=0: without) and
#                    --json $OUT/SUITE_run.json where the suite has them, the model in
#                    MODEL_ARGS for suites that run an engine (default: dummy Qwen3-0.6B), and
#                    the options in ARGS_SUITE (e.g. ARGS_attention="--batches 1 64"). A suite
#                    recording into a results file this call already recorded into continues
#                    that run (--continue-run, where it has it). GPU kernel suites measure the
#                    device ceilings first if this call has not. bench:SUITE@TAG runs it with
#                    ARGS_SUITE_TAG instead (e.g. one suite twice, on two models, one run).
#   prebuild:SUITE   `fuseinfer bench SUITE --build-only` plus ARGS_SUITE, in the background
#                    (suites that have it: attention): the JIT modules that suite's run will
#                    use (FlashInfer's take minutes) build while the next steps run; its
#                    bench:SUITE waits for them first. e.g. prebuild:attention tests:attention
#                    tune:attention bench:attention
#   all              `fuseinfer bench all --quick --json $OUT/bench_all.json` plus ARGS_all:
#                    every GPU kernel suite at its quick shape set, one summary table (the
#                    ceilings measured first where missing); records nothing
#   tune:SUITE       `fuseinfer tune SUITE --log $OUT/tune_SUITE_log.json` plus TUNE_ARGS_SUITE;
#                    the updated table comes back as $OUT/table_<gpu>.json. tune:SUITE@TAG
#                    takes TUNE_ARGS_SUITE_TAG instead (one tuning split over steps, so a
#                    step cut by the deadline loses only its own part)
#   tests            the GPU test suite; tests:NAME only tests/gpu/test_NAME*.py (PYTEST_ARGS,
#                    split on spaces; PYTEST_K: a -k expression, kept whole);
#                    tests:A,B,C runs those files as parallel pytest processes (mostly Triton
#                    compiling on the CPU; never beside a timing step) and waits for all
#   runtime          the recorded runtime set: bench:offline (ARGS_offline, default --ablate all)
#                    then bench:latency (ARGS_latency, default four ablations), one recorded run
#   serve            `fuseinfer serve` (SERVE_ARGS) on MODEL_ARGS, the two recorded serving
#                    workloads, SIGTERM
#   profile-runtime  microbench/profile_runtime.py (PROFILE_ARGS)
#   aot              both AOT builds (setup.py, CMake) on the CPU while the GPU works, then loaded
# e.g. device_run.sh all bench:ceilings bench:norm tune:rope tests runtime serve
#      RECORD=0 ARGS_offline="--num-prompts 64" device_run.sh bench:offline bench:latency
# Installs the wheels carried in .whl/, restores a carried JIT cache (.devcache/), runs the
# steps and leaves in $OUT: logs.tgz, results.tgz (each run's JSON, the recorded results
# files touched, the tuned table and tuning logs, the ceilings) and the JIT caches for the
# next call (ours as jit-cache.tgz, FlashInfer's as flashinfer-jit.tgz, Triton's compiled
# kernels as triton-cache.tgz, TRITON_CARRY_MB of them, default 24, newest first: put all
# three in .devcache/). Tuning steps build into a Triton cache of their own that stays
# behind (their hundreds of candidates would crowd out the kernels the tests and benches use).
# STEP_TIMEOUT (default 560 s) bounds each command; DEADLINE (default 540 s after the start)
# bounds them all: a step gets at most the time left, steps past it are skipped, so the
# caches and logs are always packed before the call's limit.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/microbench/wait_for_server.sh"
OUT=${OUT:-/tmp/fuseinfer-out}
LOGS=/tmp/fuseinfer-logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 FUSEINFER_CACHE_DIR=${FUSEINFER_CACHE_DIR:-/tmp/fuseinfer-cache}
MODEL_ARGS=${MODEL_ARGS:---model qwen3-0.6b --load-format dummy}
STEP_TIMEOUT=${STEP_TIMEOUT:-560}
STEP_TIMEOUT_MAX=$STEP_TIMEOUT
DEADLINE=${DEADLINE:-540}
RECORD=${RECORD:-1}
cd "$REPO"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$REPO/python:/tmp/site:${PYTHONPATH:-}
# The trimmed FlashInfer baseline (microbench/flashinfer_bundle.sh), when carried: unpacked
# from .whl/flashinfer.tar.xz to a fixed folder (its JIT build files name their sources by
# absolute path, so a restored cache stays valid), its JIT builds under
# FLASHINFER_WORKSPACE_BASE, carried back and forth as .devcache/flashinfer-jit.tgz like our
# own JIT cache. Its run-time (NVRTC) FP8 GEMM kernels keep their files there too.
export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/flashinfer-ws}
export TRTLLM_DG_CACHE_DIR=${TRTLLM_DG_CACHE_DIR:-$FLASHINFER_WORKSPACE_BASE/.cache/deep_gemm}
FI_BUNDLE=/tmp/flashinfer-bundle-device
# A bundle already unpacked from this very tarball (its checksum in .unpacked_from) is kept,
# so a caller can unpack it first and start FlashInfer JIT builds while the steps run.
FI_STAMP=$( [ -f .whl/flashinfer.tar.xz ] && cksum < .whl/flashinfer.tar.xz)
if [ -f .whl/flashinfer.tar.xz ] && [ "$(cat "$FI_BUNDLE/.unpacked_from" 2>/dev/null)" = "$FI_STAMP" ]; then
  echo "FlashInfer bundle already unpacked in $FI_BUNDLE: kept"
elif [ -f .whl/flashinfer.tar.xz ]; then
  rm -rf "$FI_BUNDLE" && mkdir -p "$FI_BUNDLE"
  tar -xJf .whl/flashinfer.tar.xz -C "$FI_BUNDLE" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      .whl/flashinfer.tar.xz "$FI_BUNDLE" || exit 1
  echo "$FI_STAMP" > "$FI_BUNDLE/.unpacked_from"
elif [ -d .whl/flashinfer ]; then  # the unpacked layout of earlier bundles
  FI_BUNDLE=$REPO/.whl/flashinfer
fi
if [ -d "$FI_BUNDLE/flashinfer" ]; then
  export PYTHONPATH=$PYTHONPATH:$FI_BUNDLE
  mkdir -p "$FLASHINFER_WORKSPACE_BASE"
  [ -f .devcache/flashinfer-jit.tgz ] && tar -xzf .devcache/flashinfer-jit.tgz -C "$FLASHINFER_WORKSPACE_BASE"
fi
if [ -f .devcache/jit-cache.tgz ]; then
  mkdir -p "$FUSEINFER_CACHE_DIR" && tar -xzf .devcache/jit-cache.tgz -C "$FUSEINFER_CACHE_DIR"
fi
# a fixed path: Triton's group files name their members by absolute path
export TRITON_CACHE_DIR=/tmp/triton-cache
[ -f .devcache/triton-cache.tgz ] &&
  python3 microbench/triton_cache_carry.py restore .devcache/triton-cache.tgz "$TRITON_CACHE_DIR"
FI=(python3 -m fuseinfer.cli)

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

# One line per registered suite: name, gpu|any, results-file stem or -, its options.
SUITES=$(python3 - <<'PY'
import argparse
from fuseinfer.bench.registry import registered_suites
for s in registered_suites():
    p = argparse.ArgumentParser()
    s.add_arguments(p)
    opts = ",".join(o for a in p._actions for o in a.option_strings)
    print(s.name, "gpu" if s.needs_gpu else "any", s.records or "-", opts)
PY
)
suite_field() { awk -v s="$1" -v f="$2" '$1 == s {print $f}' <<<"$SUITES"; }
has_option() { [[ ",$(suite_field "$1" 4)," == *",$2,"* ]]; }
declare -A RECORDED=()

copy_results() {  # copy_results STEM: the recorded results file, as $OUT/results_STEM_<gpu>.json
  [ -f "microbench/results/$KEY/$1.json" ] && cp "microbench/results/$KEY/$1.json" "$OUT/results_$1_$KEY.json"
}

copy_ceilings() { cp "$FUSEINFER_CACHE_DIR"/ceilings/*.json "$OUT/ceilings.json" 2>/dev/null; }

declare -A PREBUILD=()
step_arg() {  # step_arg PREFIX SUITE[@TAG]: sets the caller's suite, tag and extra_var (the
  # name of PREFIX_SUITE, or PREFIX_SUITE_TAG with a tag, that holds the step's options)
  suite=${2%%@*} tag=""
  [[ "$2" == *@* ]] && tag=_${2#*@}
  extra_var="${1}_${suite//-/_}$tag"
}

results_sum() { { cksum < "microbench/results/$KEY/$1.json"; } 2>/dev/null; }  # STEM

prebuild_step() {  # prebuild_step SUITE[@TAG]: its builds in the background, bounded by the deadline
  local suite tag extra_var
  step_arg ARGS "$1"
  has_option "$suite" --build-only || { echo "=== prebuild: suite $suite has no --build-only"; return 1; }
  echo "=== prebuild_$suite$tag: fuseinfer bench $suite --build-only ${!extra_var:-} (background)"
  timeout "$STEP_TIMEOUT" "${FI[@]}" bench "$suite" --build-only ${!extra_var:-} \
    >"$LOGS/prebuild_$suite$tag.log" 2>&1 &
  PREBUILD[$suite]="${PREBUILD[$suite]:-} $!"
}

wait_prebuild() {  # wait_prebuild SUITE: its background builds finished before it is timed
  local pids=${PREBUILD[$1]:-} start=$SECONDS pid
  [ -n "$pids" ] || return 0
  for pid in $pids; do wait "$pid"; echo "=== prebuild of $1 rc=$? (waited $((SECONDS - start)) s)"; done
  tail -n 20 "$LOGS"/prebuild_"$1"*.log
  unset "PREBUILD[$1]"
  local left=$((DEADLINE - SECONDS))  # the wait came out of this step's time
  STEP_TIMEOUT=$((left < STEP_TIMEOUT ? left : STEP_TIMEOUT))
}

bench_step() {  # bench_step SUITE[@TAG]: with TAG, the options in ARGS_SUITE_TAG instead
  local suite tag args=() extra_var stem
  step_arg ARGS "$1"
  wait_prebuild "$suite"
  [ "$STEP_TIMEOUT" -ge 30 ] || { echo "=== bench:$1 skipped: DEADLINE ($DEADLINE s) reached"; return 1; }
  [ -n "$(suite_field "$suite" 1)" ] || { echo "unknown suite $suite: $(cut -d' ' -f1 <<<"$SUITES" | tr '\n' ' ')"; return 1; }
  stem=$(suite_field "$suite" 3)
  if [ "$(suite_field "$suite" 2)" = gpu ] && [ "$suite" != ceilings ] && [ ! -f "$OUT/ceilings.json" ]; then
    bench_step ceilings
  fi
  has_option "$suite" --load-format && [[ " ${!extra_var:-} " != *" --model "* ]] && args+=($MODEL_ARGS)
  if [ "$RECORD" = 1 ] && has_option "$suite" --record; then
    args+=(--record)
    [ -n "${RECORDED[$stem]:-}" ] && has_option "$suite" --continue-run && args+=(--continue-run)
  fi
  has_option "$suite" --json && args+=(--json "$OUT/${suite}${tag}_run.json")
  local before; before=$(results_sum "$stem")
  TAIL=${TAIL:-40} step "bench_$suite$tag" timeout "$STEP_TIMEOUT" "${FI[@]}" bench "$suite" \
    "${args[@]}" ${!extra_var:-}
  local rc=$?
  [ "$suite" = ceilings ] && copy_ceilings
  # recorded: a whole run, or one cut by the step's timeout (suites that keep a cut run's
  # rows record them, marked cut_short)
  if [[ " ${args[*]} " == *" --record "* ]] &&
     [ "$(results_sum "$stem")" != "$before" ]; then
    RECORDED[$stem]=1
    copy_results "$stem"
  fi
  return $rc
}

all_step() {  # every GPU kernel suite at its quick shape set, the summary table as JSON
  TAIL=40 step bench_all timeout "$STEP_TIMEOUT" "${FI[@]}" bench all --quick \
    --json "$OUT/bench_all.json" ${ARGS_all:-}
  local rc=$?
  copy_ceilings
  return $rc
}

tune_step() {  # tune_step SUITE[@TAG]: with TAG, the options in TUNE_ARGS_SUITE_TAG instead
  local suite tag extra_var
  step_arg TUNE_ARGS "$1"
  TRITON_CACHE_DIR=/tmp/triton-cache-tune TAIL=30 step "tune_$suite$tag" \
    timeout "$STEP_TIMEOUT" "${FI[@]}" tune "$suite" \
    --log "$OUT/tune_${suite}${tag}_log.json" ${!extra_var:-}
  cp "autotune_configs/$KEY.json" "$OUT/table_$KEY.json" 2>/dev/null
}

tests_step() {  # tests_step [NAME | A,B,...]
  local files=(tests/gpu) name=gpu_tests
  if [[ "${1:-}" == *,* ]]; then  # one pytest per name, side by side
    local pids=() names=() n pid rc=0
    IFS=, read -ra names <<<"$1"
    for n in "${names[@]}"; do tests_step "$n" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return $rc
  fi
  if [ -n "${1:-}" ]; then
    files=(tests/gpu/test_"$1"*.py); name=gpu_tests_$1
    [ -f "${files[0]}" ] || { echo "no tests/gpu/test_$1*.py"; return 1; }
  fi
  TAIL=40 step "$name" timeout "$STEP_TIMEOUT" python3 -m pytest -m gpu "${files[@]}" -q -rf \
    -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} ${PYTEST_ARGS:-}
}

PROBE='import torch, fuseinfer
x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16); w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
y = fuseinfer.ops.rmsnorm(x, w); ref = fuseinfer.ops.norm.rmsnorm.reference_rmsnorm(x, w, 1e-6)
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

serve_bench() {  # fuseinfer serve, the two recorded serving workloads, SIGTERM
  "${FI[@]}" serve $MODEL_ARGS --port 30000 ${SERVE_ARGS:-} >"$LOGS/serve.log" 2>&1 &
  local pid=$! rec=(); [ "$RECORD" = 1 ] && rec=(--record)
  wait_for_server $pid "$LOGS/serve.log" 240 || return 1
  local sv=("${FI[@]}" bench serving --base-url http://127.0.0.1:30000)
  step serving_warmup timeout 120 "${sv[@]}" --num-prompts 16 --random-input 256 --random-output 16
  TAIL=30 step serving_rate_inf timeout 120 "${sv[@]}" --num-prompts 50 --random-input 256 \
    --random-output 64 "${rec[@]}" --json "$OUT/serving_rate_inf.json"
  local cont=(); [ ${#rec[@]} -gt 0 ] && cont=(--continue-run)
  TAIL=30 step serving_c64 timeout 240 "${sv[@]}" --num-prompts 256 --random-input 1024 \
    --random-output 256 --max-concurrency 64 "${rec[@]}" "${cont[@]}" --json "$OUT/serving_c64.json"
  kill -TERM $pid; wait $pid; echo "fuseinfer serve exit code after SIGTERM: $?"
  tail -n 20 "$LOGS/serve.log"
  [ ${#rec[@]} -gt 0 ] && copy_results serving
  return 0
}

{ nvidia-smi; python3 -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; } 2>&1 | tee "$LOGS/machine.log"
KEY=$(python3 -c 'from fuseinfer.dispatch import current_identity, gpu_key; print(gpu_key(current_identity()))')
for s in "$@"; do [ "$s" = aot ] && start_aot; done
step jit_first_use "${FI[@]}" bench norm --shapes 8x4096 --baselines
step info "${FI[@]}" info

for s in "$@"; do
  left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then echo "=== $s skipped: DEADLINE ($DEADLINE s) reached"; continue; fi
  STEP_TIMEOUT=$((left < STEP_TIMEOUT_MAX ? left : STEP_TIMEOUT_MAX))
  case $s in
    bench:*) bench_step "${s#bench:}" ;;
    prebuild:*) prebuild_step "${s#prebuild:}" ;;
    all) all_step ;;
    tune:*) tune_step "${s#tune:}" ;;
    tests) tests_step ;;
    tests:*) tests_step "${s#tests:}" ;;
    runtime) ARGS_offline=${ARGS_offline:---ablate all} \
             ARGS_latency=${ARGS_latency:---ablate cuda-graph overlap-schedule small-batch-gemv pdl}
             TAIL=30 bench_step offline; TAIL=10 bench_step latency ;;
    aot) check_aot ;;
    serve) serve_bench ;;
    profile-runtime) TAIL=120 step profile_runtime timeout 300 python3 microbench/profile_runtime.py ${PROFILE_ARGS:-} ;;
    *) echo "unknown step $s (all bench:SUITE prebuild:SUITE tune:SUITE tests tests:NAME runtime aot serve profile-runtime)" ;;
  esac
done
for suite in "${!PREBUILD[@]}"; do wait_prebuild "$suite"; done  # their builds travel back too

# Only the newest build of each module travels back (a load touches its folder, so that is
# the one in use); older ones (sources since changed)
# would push the tarball past the 16 MiB a returned file may have.
for module in "$FUSEINFER_CACHE_DIR"/jit/*/; do
  ls -1dt "$module"*/ 2>/dev/null | tail -n +2 | xargs -r rm -rf
done
tar -czf "$OUT/jit-cache.tgz" -C "$FUSEINFER_CACHE_DIR" jit 2>/dev/null
python3 microbench/triton_cache_carry.py pack "$TRITON_CACHE_DIR" "$OUT/triton-cache.tgz" \
  --cap-mb "${TRITON_CARRY_MB:-24}"
if [ -d "$FLASHINFER_WORKSPACE_BASE/.cache" ]; then  # whole build dirs: ninja rebuilds without its objects
  tar -czf "$OUT/flashinfer-jit.tgz" -C "$FLASHINFER_WORKSPACE_BASE" .cache
  du -h "$OUT/flashinfer-jit.tgz"  # it travels back in the 64 MiB carry: prune if it grows near that
fi
tar -czf "$OUT/logs.tgz" -C "$LOGS" .
# At most 8 files come back from a call: the JSON (runs, results files, tables, tuning
# logs, ceilings) travels as one results.tgz next to the caches and the logs.
(cd "$OUT" && ls ./*.json >/dev/null 2>&1 && tar -czf results.tgz ./*.json && rm -f ./*.json)
ls -la "$OUT"
