#!/usr/bin/env bash
# Measure the peer, llama.cpp, on SmolLM2-135M-Instruct (Q8_0 and Q4_1) with
# llama-bench: prompt processing of 128 tokens (pp128) and generation of 64
# tokens (tg64), with 1 and 2 threads, 5 repetitions each (mean +- std).
#
# Builds the peer and prepares the models first if needed (both idempotent).
# Raw outputs (one llama-bench run per model and thread count, markdown on
# stdout and JSON on stderr) go to $LLAMA_CPP_CACHE/results-<quant>-t<threads>.txt
# and .json, and a summary to $LLAMA_CPP_CACHE/results-summary.txt (printed too).
#
# Env:
#   LLAMA_CPP_CACHE   cache dir, outside the repo (default /work/cache/llama.cpp)
#   BENCH_THREADS     thread counts (default "1 2")
#   BENCH_REPS        repetitions (default 5)
#   BENCH_P, BENCH_N  prompt and generation lengths (default 128, 64)
#   BENCH_WAIT_IDLE   if set to N, before each llama-bench run wait up to N
#                     seconds for the machine to be idle (2-thread runs collapse
#                     when another process shares a core); BENCH_IDLE_SECS sets
#                     how long it must look idle (default 5)
#   BENCH_NICE        niceness for llama-bench (default -20 as root, else 0):
#                     on a shared 2-core machine other jobs (cargo, tests) steal
#                     a core and 2-thread runs collapse (ggml threads spin at
#                     barriers); at -20 the scheduler gives them ~1% of the CPU.
#                     With autogroup scheduling on, nice only ranks processes
#                     within one session, so llama-bench runs in a session of
#                     its own (setsid) whose autogroup gets the same niceness.
#                     Measure arq the same way for a fair comparison.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${LLAMA_CPP_CACHE:-/work/cache/llama.cpp}"
threads="${BENCH_THREADS:-1 2}"
reps="${BENCH_REPS:-5}"
p="${BENCH_P:-128}"
n="${BENCH_N:-64}"
if [ "$(id -u)" = 0 ]; then nice_lvl="${BENCH_NICE:--20}"; else nice_lvl="${BENCH_NICE:-0}"; fi

bin=$("$here/build_llama_cpp.sh")
models=$(LLAMA_CPP_BIN="$bin" "$here/prepare_peer_models.sh")
mapfile -t ggufs <<< "$models"

# The machine is idle when, over BENCH_IDLE_SECS (default 5) samples 1 s apart,
# no process but the sampler itself is runnable (/proc/stat procs_running).
machine_idle() {
  local i r
  for ((i = 0; i < ${BENCH_IDLE_SECS:-5}; i++)); do
    r=$(awk '/^procs_running/ {print $2}' /proc/stat)
    [ "$r" -le 1 ] || return 1
    sleep 1
  done
}
# Wait (if BENCH_WAIT_IDLE is set) for the machine to be idle; prints "idle" or
# "busy" (gave up waiting).
wait_idle() {
  [ -n "${BENCH_WAIT_IDLE:-}" ] || { echo "unchecked"; return; }
  local deadline=$(( $(date +%s) + BENCH_WAIT_IDLE ))
  until machine_idle; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "machine still busy after ${BENCH_WAIT_IDLE}s, running anyway" >&2
      echo "busy"; return
    fi
    sleep 5
  done
  echo "idle"
}

summary="$cache/results-summary.txt"
{
  echo "# llama.cpp peer: llama-bench -p $p -n $n -r $reps, nice $nice_lvl ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo "# host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs on the machine skew the numbers)"
} > "$summary"

for gguf in "${ggufs[@]}"; do
  quant=$(basename "$gguf" .gguf); quant=${quant##*.}
  for t in $threads; do
    base="$cache/results-$quant-t$t"
    state=$(wait_idle)
    echo "== $quant, $t thread(s) (machine: $state)" >&2
    setsid --wait bash -c '
      n=$1; shift
      [ -w /proc/self/autogroup ] && echo "$n" > /proc/self/autogroup 2>/dev/null
      exec nice -n "$n" "$@"' _ "$nice_lvl" \
      "$bin/llama-bench" -m "$gguf" -p "$p" -n "$n" -t "$t" -r "$reps" \
      -o md -oe json > "$base.txt" 2> "$base.json"
    cat "$base.txt" >&2
    python3 - "$base.json" "$quant" "$state" >> "$summary" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    print(f"{sys.argv[2]:5s} t={r['n_threads']} {test:6s} "
          f"mean {r['avg_ts']:8.2f} +- {r['stddev_ts']:7.2f} tok/s, "
          f"max {max(r['samples_ts']):8.2f}  "
          f"(start: {sys.argv[3]}, build {r['build_commit']}({r['build_number']}))")
EOF
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$summary"
cat "$summary"
