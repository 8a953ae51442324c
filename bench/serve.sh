#!/usr/bin/env bash
# Load test: `arq serve` beside `llama-server` on SmolLM2-135M-Instruct q8 (arq's q8 from
# the Q4_1 GGUF; llama.cpp's Q8_0 requantized from the same file), both on 2 threads,
# loopback only. For N in 1 2 4 8 concurrent streaming clients (each 2 completions of
# 64 tokens, sampled, EOS ignored), the servers run alternately, arq first on odd rounds.
# Prints one JSON line per run (bench/serve_load.py) and a markdown table.
#
# Env: ARQ_BIN (an arq binary to use instead of building one), ROUNDS (default 2), CLIENTS (default "1 2 4 8"), THREADS (default 2),
#      LLAMA_CPP_CACHE (see build_llama_cpp.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
rounds="${ROUNDS:-2}"
clients="${CLIENTS:-1 2 4 8}"
threads="${THREADS:-2}"
ctx=1024

arq="${ARQ_BIN:-}"
if [ -z "$arq" ]; then
  cargo build --release -p arq-convert --bin arq >&2
  arq="${CARGO_TARGET_DIR:-target}/release/arq"
fi
gguf=$(models/fetch_smollm2.sh)
ours="$(dirname "$gguf")/smollm2-q8.arq"
[ -s "$ours" ] || "$arq" convert "$gguf" -o "$ours" --quant q8 >&2
server_bin="$(LLAMA_CPP_SERVER=1 "$here/build_llama_cpp.sh")/llama-server"
peer=$("$here/prepare_peer_models.sh" "$gguf" | tail -n 1) # the Q8_0

out=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$out" "$out.log"' EXIT

# run NAME N: starts the server for N slots, loads it, stops it.
run() {
  local name=$1 n=$2 port=$((18000 + RANDOM % 2000)) pid
  if [ "$name" = arq ]; then
    "$arq" serve "$ours" --port "$port" --slots "$n" --ctx "$ctx" --threads "$threads" 2>"$out.log" &
  else
    "$server_bin" -m "$peer" --port "$port" --parallel "$n" -c $((n * ctx)) -t "$threads" -tb "$threads" \
      --no-webui >"$out.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  python3 "$here/serve_load.py" "http://127.0.0.1:$port" "$pid" --clients "$n" --requests 2 --max-tokens 64 |
    sed "s/^{/{\"server\": \"$name\", /" | tee -a "$out"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for r in $(seq "$rounds"); do
  for n in $clients; do
    if [ $((r % 2)) -eq 1 ]; then run arq "$n"; run llama-server "$n"; else run llama-server "$n"; run arq "$n"; fi
  done
done

echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), threads $threads"
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| clients | server | aggregate tok/s | per stream tok/s | TTFT p50 ms | TTFT p99 ms | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
for n in sorted({r["clients"] for r in rows}):
    for s in ("arq", "llama-server"):
        rs = [r for r in rows if r["clients"] == n and r["server"] == s]
        if not rs:
            continue
        med = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {n} | {s} | {med('aggregate_tok_s'):.1f} | {med('per_stream_tok_s'):.1f} | "
              f"{med('ttft_p50_ms'):.0f} | {med('ttft_p99_ms'):.0f} | {max(r['peak_rss_mib'] for r in rs):.0f} |")
PY
