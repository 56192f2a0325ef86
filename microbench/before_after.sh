#!/usr/bin/env bash
# Before/after comparison of the user-facing runtime numbers, in one machine session:
#   microbench/before_after.sh BEFORE_TREE [ROUNDS] [AFTER_TREE]
# BEFORE_TREE is a checkout of the older code (its python/ and csrc/; e.g.
# `mkdir .before && git archive REV python csrc autotune_configs | tar -x -C .before`);
# AFTER_TREE defaults to the working tree. Each round runs bench offline, bench latency
# and the two recorded serving workloads on both trees, alternating which goes first, with
# the same client (the older tree's bench serving) against both servers. Logs and one JSON
# per run land in $OUT/ab/, and microbench/before_after_summary.py prints the medians and
# ratios. AB_PARTS picks what runs (default "offline latency serving"); REPEATS and
# C64_REPEATS repeat the serving workloads within one server start (seeds 1..N, the same
# prompts for both trees).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/microbench/wait_for_server.sh"
BEFORE=$(cd "$1" && pwd)
ROUNDS=${2:-2}
AFTER=$(cd "${3:-$REPO}" && pwd)
OUT=${OUT:-/tmp/fuseinfer-out}
AB=$OUT/ab
PARTS=" ${AB_PARTS:-offline latency serving} "
REPEATS=${REPEATS:-1}  # serving runs per server start: rate inf, and concurrency 64
C64_REPEATS=${C64_REPEATS:-$REPEATS}
mkdir -p "$AB"
export PYTHONUNBUFFERED=1 FUSEINFER_CACHE_DIR=${FUSEINFER_CACHE_DIR:-/tmp/fuseinfer-cache}
MODEL=(--model qwen3-0.6b --load-format dummy)
CLIENT=(env PYTHONPATH="$BEFORE/python:/tmp/site" python3 -m fuseinfer.cli bench serving
        --base-url http://127.0.0.1:30000)

run_tree() {  # run_tree NAME TREE ROUND
  local name=$1 tree=$2 round=$3 tag="$1_r$3"
  local py=(env PYTHONPATH="$tree/python:/tmp/site" python3 -m fuseinfer.cli)
  if [[ $PARTS == *" offline "* ]]; then
    echo "=== $tag: offline"
    timeout 300 "${py[@]}" bench offline "${MODEL[@]}" --json "$AB/offline_$tag.json" \
      >"$AB/offline_$tag.log" 2>&1; echo "rc=$? $(grep 'as configured' "$AB/offline_$tag.log")"
  fi
  if [[ $PARTS == *" latency "* ]]; then
    echo "=== $tag: latency"
    timeout 200 "${py[@]}" bench latency "${MODEL[@]}" >"$AB/latency_$tag.log" 2>&1
    echo "rc=$? $(grep 'ms/token' "$AB/latency_$tag.log")"
  fi
  [[ $PARTS == *" serving "* ]] || return 0
  echo "=== $tag: serve"
  "${py[@]}" serve "${MODEL[@]}" --port 30000 >"$AB/serve_$tag.log" 2>&1 &
  local pid=$!
  wait_for_server $pid "$AB/serve_$tag.log" 300 || return 1
  timeout 120 "${CLIENT[@]}" --num-prompts 16 --random-input 256 --random-output 16 \
    >"$AB/serving_warmup_$tag.log" 2>&1
  local k
  for k in $(seq 1 "$REPEATS"); do  # the rate-inf run lasts ~0.2 s: repeat it, not the start
    timeout 120 "${CLIENT[@]}" --num-prompts 50 --random-input 256 --random-output 64 \
      --seed "$k" --json "$AB/serving_inf_${tag}_$k.json" >"$AB/serving_inf_${tag}_$k.log" 2>&1
    echo "rate inf $k rc=$?"
  done
  for k in $(seq 1 "$C64_REPEATS"); do
    timeout 240 "${CLIENT[@]}" --num-prompts 256 --random-input 1024 --random-output 256 \
      --max-concurrency 64 --seed "$k" --json "$AB/serving_c64_${tag}_$k.json" \
      >"$AB/serving_c64_${tag}_$k.log" 2>&1
    echo "c64 $k rc=$?"
  done
  kill -TERM $pid; wait $pid; echo "serve exit after SIGTERM: $?"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    run_tree before "$BEFORE" "$r"; run_tree after "$AFTER" "$r"
  else
    run_tree after "$AFTER" "$r"; run_tree before "$BEFORE" "$r"
  fi
done
python3 "$REPO/microbench/before_after_summary.py" "$AB" | tee "$OUT/before_after.txt"
