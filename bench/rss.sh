#!/usr/bin/env bash
# Peak resident memory of a 64-token generation: arq (`arq generate --ctx 512`) against
# llama.cpp's `llama-simple` (its context is the prompt plus the 64 tokens, about 70:
# a smaller KV cache than arq's 512, so the comparison favours the peer), on
# SmolLM2-135M-Instruct, q8 against Q8_0 and q4 against Q4_1, 2 threads, median of 3 runs
# each, measured by GNU time (`%M`, the kernel's maxrss). Writes its section of
# bench/RESULTS.md. Builds the peer and prepares its models if needed (bench/run.sh's
# scripts; cached outside the repo), and arq's models like bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { source scripts/lib.sh; apt_install time; }
bin=$(bench/build_llama_cpp.sh)
mapfile -t ggufs < <(LLAMA_CPP_BIN="$bin" bench/prepare_peer_models.sh)
cargo build --release -q -p arq-convert --bin arq
arq="${CARGO_TARGET_DIR:-target}/release/arq"
src=$(models/fetch_smollm2.sh)
mkdir -p models/cache
for q in q8 q4; do
  [ -f "models/cache/smollm2-$q.arq" ] || "$arq" convert "$src" -o "models/cache/smollm2-$q.arq" --quant "$q" --no-calib
done
prompt="The history of the printing press begins"

rss_kb() { # rss_kb CMD...: the median maxrss (KiB) of 3 runs
  local i out=()
  for i in 1 2 3; do
    out+=("$(/usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1)")
  done
  printf '%s\n' "${out[@]}" | sort -n | sed -n 2p
}

rows=()
for pair in "q8 Q8_0" "q4 Q4_1"; do
  read -r q peer <<<"$pair"
  gguf=$(printf '%s\n' "${ggufs[@]}" | grep "$peer")
  model="models/cache/smollm2-$q.arq"
  a=$(rss_kb "$arq" generate "$model" -p "$prompt" -n 64 --ctx 512 --threads 2 --seed 1)
  l=$(rss_kb "$bin/llama-simple" -m "$gguf" -n 64 "$prompt")
  rows+=("$q $peer $a $l $(stat -c %s "$model") $(stat -c %s "$gguf")")
done

python3 - "$(git rev-parse --short HEAD)" "$(date -u +%F)" "${rows[@]}" <<'PY' | tee /dev/stderr | python3 bench/section.py bench/RESULTS.md rss
import sys
commit, day, rows = sys.argv[1], sys.argv[2], [r.split() for r in sys.argv[3:]]
mib = lambda b: b / 1048576
print("## Peak RSS of a 64-token generation (SmolLM2-135M-Instruct)")
print()
print(f"`bash bench/rss.sh`, commit {commit}, {day}: GNU time's maxrss, median of 3 runs, 2 threads.")
print("arq: `arq generate MODEL -p PROMPT -n 64 --ctx 512` (the KV cache is sized for 512 tokens,")
print("f32: 22.5 MiB, of which the pages of the 71 tokens used are touched). llama.cpp: `llama-simple -m GGUF -n 64 PROMPT`,")
print("whose context is only prompt + 64 tokens. Target: arq at most weights + KV cache + 16 MiB, and below llama.cpp.")
print()
print("| arq | llama.cpp | arq peak RSS MiB | llama.cpp peak RSS MiB | arq / llama.cpp | arq file MiB | bound: file + KV(512) + 16 MiB |")
print("|---|---|---|---|---|---|---|")
kv = 2 * 30 * 512 * 192 * 4  # layers x ctx x kv_dim x f32, keys and values
for q, peer, a, l, fa, fl in rows:
    a, l, fa = int(a) * 1024, int(l) * 1024, int(fa)
    bound = fa + kv + 16 * 1048576
    print(f"| {q} | {peer} | {mib(a):.1f} | {mib(l):.1f} | {a / l:.2f} | {mib(fa):.1f} | {mib(bound):.1f} ({'met' if a <= bound else 'NOT met'}) |")
PY
