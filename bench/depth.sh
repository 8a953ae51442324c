#!/usr/bin/env bash
# Long contexts: arq against llama.cpp on SmolLM2-135M-Instruct (arq q8 vs llama.cpp Q8_0
# of the same GGUF): a 2,048-token prompt (tokens/s), and 64 tokens generated after it
# (tokens/s at a depth of 2,048). The tools alternate, round after round, at top
# priority; medians. arq: `arq bench --prompt-tokens 2048 --gen-tokens 64`, with its
# default f32 KV cache and with `--kv f16` (llama.cpp's default cache, like for like);
# llama.cpp: `llama-bench -p 2048 -n 0` and `llama-bench -p 0 -n 64 -d 2048`.
# Writes its section of bench/RESULTS.md (bench/section.py).
#
# Env: DEPTH_ROUNDS (default 2), DEPTH_REPS per round (default 2), DEPTH_THREADS ("1 2"),
# DEPTH (2048).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${DEPTH_ROUNDS:-2}"
reps="${DEPTH_REPS:-2}"
threads="${DEPTH_THREADS:-1 2}"
depth="${DEPTH:-2048}"
gguf=$(models/fetch_smollm2.sh)
bin=$(bench/build_llama_cpp.sh)
mapfile -t peer < <(LLAMA_CPP_BIN="$bin" bench/prepare_peer_models.sh "$gguf")
peer_q80="${peer[1]}"
cargo build --release -q -p arq-convert --bin arq
arq="${CARGO_TARGET_DIR:-target}/release/arq"
model=models/cache/smollm2-q8.arq
[ -s "$model" ] || "$arq" convert "$gguf" -o "$model" --quant q8 --no-calib >&2

prio() {
  if [ "$(id -u)" = 0 ]; then
    setsid --wait bash -c 'echo -20 > /proc/self/autogroup 2>/dev/null; exec nice -n -20 "$@"' _ "$@"
  else
    "$@"
  fi
}
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
for round in $(seq "$rounds"); do
  for t in $threads; do
    echo "round $round, $t threads" >&2
    prio "$bin/llama-bench" -m "$peer_q80" -p "$depth" -n 0 -t "$t" -r "$reps" -o json > "$raw/llama-pp-t$t-r$round.json" 2>/dev/null
    prio "$bin/llama-bench" -m "$peer_q80" -p 0 -n 64 -d "$depth" -t "$t" -r "$reps" -o json > "$raw/llama-tg-t$t-r$round.json" 2>/dev/null
    for kv in f32 f16; do
      prio "$arq" bench "$model" --prompt-tokens "$depth" --gen-tokens 64 --threads "$t" --reps "$reps" --kv "$kv" \
        --json > "$raw/arq-$kv-t$t-r$round.json"
    done
  done
done

cpu=$(bash bench/cpu.sh)
commit=$(git rev-parse --short HEAD)
python3 - "$raw" "$cpu" "$(nproc)" "$commit" "$rounds" "$reps" "$threads" "$depth" > "$raw/section.md" <<'PY'
import glob, json, statistics, sys, datetime
raw, cpu, nproc, commit, rounds, reps, threads, depth = sys.argv[1:]
med = statistics.median
def llama(kind, t):
    return [s for f in glob.glob(f"{raw}/llama-{kind}-t{t}-r*.json") for e in json.load(open(f)) for s in e["samples_ts"]]
def arq(key, t, kv):
    return [json.load(open(f))[key] for f in glob.glob(f"{raw}/arq-{kv}-t{t}-r*.json")]
tun = json.load(open(sorted(glob.glob(f"{raw}/arq-*.json"))[0])).get("tuning", {})
print(f"## Long contexts: a {depth}-token prompt, and decoding after it\n")
print(f"SmolLM2-135M-Instruct, arq q8 vs llama.cpp Q8_0 of the same GGUF: prompt processing of {depth} tokens, and 64 tokens generated at a depth of {depth}.")
print(f"Medians over {rounds} rounds x {reps} repetitions, tools alternating, top priority.\n")
print(f"- machine: {cpu}, {nproc} cores (shared and noisy; compare ratios)")
print(f"- arq commit {commit}; arq kernel settings: prefetch {tun.get('prefetch_bytes')} B, rows {tun.get('decode_rows')}, tier {tun.get('decode_tier')} (source: {tun.get('source')})")
print(f"- peer: llama.cpp vendored in llama-cpp-python 0.3.36 (bench/build_llama_cpp.sh), f16 KV cache (its default); arq: its default f32 KV cache, and `--kv f16`")
print(f"- date: {datetime.date.today()}")
print(f"- command: `bash bench/depth.sh` (arq: `arq bench MODEL --prompt-tokens {depth} --gen-tokens 64 --threads T --kv f32|f16`; peer: `llama-bench -p {depth} -n 0` and `llama-bench -p 0 -n 64 -d {depth}`)\n")
print(f"| threads | arq KV cache | prompt {depth} tok/s arq | llama.cpp | ratio | gen tok/s at depth {depth} arq | llama.cpp | ratio |")
print("|---|---|---|---|---|---|---|---|")
for t in threads.split():
    for kv in ("f32", "f16"):
        pp, lpp = med(arq("prompt_tokens_per_s", t, kv)), med(llama("pp", t))
        tg, ltg = med(arq("gen_tokens_per_s", t, kv)), med(llama("tg", t))
        print(f"| {t} | {kv} | {pp:.1f} | {lpp:.1f} | {pp / lpp:.2f} | {tg:.1f} | {ltg:.1f} | {tg / ltg:.2f} |")
PY
python3 bench/section.py bench/RESULTS.md text-depth < "$raw/section.md"
cat "$raw/section.md"
