#!/usr/bin/env bash
# Scoring a text: arq score against llama-perplexity on SmolLM2-135M-Instruct (arq q8 vs
# llama.cpp Q8_0 of the same GGUF), on the same positions with the same contexts:
# chunks of CTX tokens, each scoring its second half (llama-perplexity's positions;
# `arq score --stride CTX --min-context CTX/2+1`). arq's default windows (stride CTX/2,
# every position scored) run beside them. The tools alternate, round after round, at
# top priority; wall-clock medians, load included (well under a second for both).
# The text: the first 40,000 bytes of models/tinygpt/corpus.txt (English prose).
# Writes its section of bench/RESULTS.md (bench/section.py).
#
# Env: SCORE_ROUNDS (default 3), SCORE_THREADS ("1 2"), SCORE_CTX (512).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${SCORE_ROUNDS:-3}"
threads="${SCORE_THREADS:-1 2}"
ctx="${SCORE_CTX:-512}"
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
# Wall seconds of a command, its stdout and stderr to $2.
timed() {
  local out=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  prio "$@" > "$out" 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
head -c 40000 models/tinygpt/corpus.txt > "$raw/text.txt"
for round in $(seq "$rounds"); do
  for t in $threads; do
    echo "round $round, $t threads" >&2
    timed "$raw/llama-t$t-r$round.log" "$bin/llama-perplexity" -m "$peer_q80" -f "$raw/text.txt" -c "$ctx" -b "$ctx" -t "$t" \
      > "$raw/llama-t$t-r$round.s"
    timed "$raw/same-t$t-r$round.json" "$arq" score "$model" "$raw/text.txt" --ctx "$ctx" --stride "$ctx" \
      --min-context $((ctx / 2 + 1)) --threads "$t" --json > "$raw/same-t$t-r$round.s"
    timed "$raw/default-t$t-r$round.json" "$arq" score "$model" "$raw/text.txt" --ctx "$ctx" --threads "$t" --json \
      > "$raw/default-t$t-r$round.s"
  done
done

cpu=$(bash bench/cpu.sh)
commit=$(git rev-parse --short HEAD)
python3 - "$raw" "$cpu" "$(nproc)" "$commit" "$rounds" "$threads" "$ctx" > "$raw/section.md" <<'PY'
import glob, json, re, statistics, sys, datetime
raw, cpu, nproc, commit, rounds, threads, ctx = sys.argv[1:]
ctx = int(ctx)
med = statistics.median
def secs(kind, t):
    return [float(open(f).read()) for f in glob.glob(f"{raw}/{kind}-t{t}-r*.s")]
def llama(t):
    log = open(glob.glob(f"{raw}/llama-t{t}-r*.log")[0]).read()
    chunks = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
    ppl = float(re.search(r"Final estimate: PPL = ([\d.]+)", log).group(1))
    return chunks, ppl
def arq(kind, t):
    return json.load(open(glob.glob(f"{raw}/{kind}-t{t}-r*.json")[0]))
print("## Scoring: arq score vs llama-perplexity\n")
print(f"SmolLM2-135M-Instruct, arq q8 vs llama.cpp Q8_0 of the same GGUF, the first 40,000 bytes of `models/tinygpt/corpus.txt`, context {ctx}.")
print(f"Same positions, same contexts: llama-perplexity scores the second half of each chunk of {ctx} tokens; arq `score --stride {ctx} --min-context {ctx // 2 + 1}` scores the same positions")
print(f"(plus those of the text's last, partial chunk, which llama-perplexity drops). arq's default windows (stride {ctx // 2}, every position scored) beside them.")
print("Wall-clock medians per run (load included), tools alternating, top priority.\n")
print(f"- machine: {cpu}, {nproc} cores (shared and noisy; compare ratios)")
print(f"- arq commit {commit}; peer: llama.cpp vendored in llama-cpp-python 0.3.36 (bench/build_llama_cpp.sh)")
print(f"- date: {datetime.date.today()}; {rounds} rounds")
print("- command: `bash bench/score.sh`\n")
print("| threads | tool | windows | scored tokens | evaluated tokens | perplexity | wall s | scored tok/s | evaluated tok/s | scored tok/s vs llama-perplexity |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t in threads.split():
    chunks, ppl = llama(t)
    l_s = med(secs("llama", t)); l_scored = chunks * (ctx // 2 - 1); l_eval = chunks * ctx
    print(f"| {t} | llama-perplexity | {chunks} chunks of {ctx} | {l_scored} | {l_eval} | {ppl:.4f} | {l_s:.2f} | {l_scored / l_s:.0f} | {l_eval / l_s:.0f} | 1.00 |")
    for kind, label in (("same", f"stride {ctx}, min-context {ctx // 2 + 1}"), ("default", f"stride {ctx // 2} (default)")):
        v = arq(kind, t); s = med(secs(kind, t))
        scored, ev = v["tokens"], v["windows"]["evaluated_tokens"]
        print(f"| {t} | arq | {label} | {scored} | {ev} | {v['perplexity']:.4f} | {s:.2f} | {scored / s:.0f} | {ev / s:.0f} | {(scored / s) / (l_scored / l_s):.2f} |")
PY
python3 bench/section.py bench/RESULTS.md scoring < "$raw/section.md"
cat "$raw/section.md"
