#!/usr/bin/env bash
# arq against llama.cpp on SmolLM2-135M-Instruct (or Gemma 3 270M with BENCH_MODEL=gemma3),
# side by side in the same run:
# q8 vs llama.cpp Q8_0 and q4 vs llama.cpp Q4_1, prompt processing (128 tokens) and
# generation (64 tokens), at 1 and 2 threads. The two tools alternate, round after
# round, so drifting load on this shared machine hits both; medians over all samples.
# Writes its section of bench/RESULTS.md (bench/section.py). The peer is built once and cached outside the repo
# (bench/build_llama_cpp.sh); its Q8_0 is requantized from the same GGUF.
#
# With Gemma 3, llama.cpp also runs the fetched Q4_K_M file itself ("as fetched").
#
# Env: BENCH_MODEL (smollm2 | gemma3), BENCH_ROUNDS (default 3), BENCH_REPS per round
# (default 3), BENCH_THREADS ("1 2").
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${BENCH_ROUNDS:-3}"
reps="${BENCH_REPS:-3}"
threads="${BENCH_THREADS:-1 2}"
cache="${LLAMA_CPP_CACHE:-/work/cache/llama.cpp}"

case "${BENCH_MODEL:-smollm2}" in
  smollm2) gguf=$(models/fetch_smollm2.sh) name="SmolLM2-135M-Instruct" stem=smollm2 section=text-models ;;
  gemma3) gguf=$(models/fetch_gemma3.sh) name="Gemma 3 270M" stem=gemma3 section=text-gemma3 ;;
  *) echo "BENCH_MODEL must be smollm2 or gemma3" >&2; exit 2 ;;
esac
bin=$(bench/build_llama_cpp.sh)
mapfile -t peer < <(LLAMA_CPP_BIN="$bin" bench/prepare_peer_models.sh "$gguf")
peer_q41="${peer[0]}"
peer_q80="${peer[1]}"
# Pairs "arq-quant peer-label peer-file"; Gemma's own Q4_K_M file runs on the peer too.
pairs=("q8 Q8_0 $peer_q80" "q4 Q4_1 $peer_q41")
[ "$stem" = gemma3 ] && pairs+=("q4 Q4_K_M $gguf")

cargo build --release -p arq-convert >&2
arq="${CARGO_TARGET_DIR:-target}/release/arq"
for q in q8 q4; do
  out="models/cache/$stem-$q.arq"
  [ -s "$out" ] || "$arq" convert "$gguf" -o "$out" --quant "$q" --no-calib >&2
done

# Both tools run in their own session at top priority (as root): with autogroup
# scheduling, plain nice does nothing, and spinning threads that share a core with
# another job collapse (bench/run_llama_bench.sh has the details).
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
    for pair in "${pairs[@]}"; do
      set -- $pair
      echo "round $round, $t threads, $1 vs $2" >&2
      prio "$bin/llama-bench" -m "$3" -p 128 -n 64 -t "$t" -r "$reps" -o json > "$raw/llama-$2-t$t-r$round.json" 2>/dev/null
      prio "$arq" bench --bandwidth --threads "$t" --json > "$raw/bw-$1-$2-t$t-r$round.json"
      prio "$arq" bench "models/cache/$stem-$1.arq" --prompt-tokens 128 --gen-tokens 64 --threads "$t" --reps "$reps" --json \
        > "$raw/arq-$1-$2-t$t-r$round.json"
    done
  done
done

# Weight bytes one decoded token reads: every matrix, the token embedding only when it
# is also the output head (tied).
for q in q8 q4; do
  "$arq" inspect "models/cache/$stem-$q.arq" --json | python3 -c '
import json, sys
t = json.load(sys.stdin)["tensors"]
names = {x["name"] for x in t}
print(sum(x["bytes"] for x in t if len(x["shape"]) == 2 and x["dtype"] in ("q8", "q4", "f32")
          and (x["name"] != "token_embd" or "output" not in names)))' > "$raw/bytes-$q"
done

labels=$(for p in "${pairs[@]}"; do set -- $p; printf '%s:%s ' "$1" "$2"; done)
cpu=$(bash bench/cpu.sh)
commit=$(git rev-parse --short HEAD)
python3 - "$raw" "$cpu" "$(nproc)" "$commit" "$rounds" "$reps" "$threads" "$bin" "$name" "$labels" > "$raw/section.md" <<'PY'
import glob, json, statistics, sys, datetime
raw, cpu, nproc, commit, rounds, reps, threads, bin_dir, name, pairs = sys.argv[1:]
pairs = [p.split(":") for p in pairs.split()]
def med(v): return statistics.median(v) if v else float("nan")
rows = []
for t in threads.split():
    for q, peer in pairs:
        pp, tg, lpp, ltg, rss, load, bw = [], [], [], [], [], [], []
        per_token = int(open(f"{raw}/bytes-{q}").read())
        for f in glob.glob(f"{raw}/bw-{q}-{peer}-t{t}-r*.json"):
            bw.append(json.load(open(f))["read_gb_per_s"] * 1e9)
        for f in glob.glob(f"{raw}/arq-{q}-{peer}-t{t}-r*.json"):
            d = json.load(open(f))
            pp.append(d["prompt_tokens_per_s"]); tg.append(d["gen_tokens_per_s"])
            rss.append(d["peak_rss_bytes"]); load.append(d["first_token_ms"])
        for f in glob.glob(f"{raw}/llama-{peer}-t{t}-r*.json"):
            for e in json.load(open(f)):
                (lpp if e["n_prompt"] else ltg).extend(e["samples_ts"])
        share = lambda tok_s: 100 * tok_s * per_token / med(bw)
        rows.append((t, q, peer, med(pp), med(lpp), med(tg), med(ltg), med(rss), med(load), med(bw) / 1e9, share(med(tg)), share(med(ltg))))
print(f"## Text models: arq vs llama.cpp on {name}\n")
print(f"arq against llama.cpp on {name}, same machine, same run, tools alternating.")
print(f"Medians over {rounds} rounds x {reps} repetitions (arq: after a warm-up each round; llama.cpp: llama-bench's samples).\n")
print(f"- machine: {cpu}, {nproc} cores (shared and noisy; compare ratios, not absolute numbers)")
print(f"- arq commit {commit}; peer: llama.cpp vendored in llama-cpp-python 0.3.36 (CPU backend, GGML_NATIVE), `{bin_dir}`")
print(f"- date: {datetime.date.today()}")
tun = json.load(open(sorted(glob.glob(f"{raw}/arq-*.json"))[0])).get("tuning", {})
print(f"- arq kernel settings: prefetch {tun.get('prefetch_bytes')} B, one-token products on the {tun.get('decode_tier')} path, weight rows {tun.get('decode_rows')} (source: {tun.get('source')}; `arq tune MODEL` measures them)")
print("- the peer is built with -march=native minus AMX: Debian 12's GCC 12 miscompiles ggml's AMX tile setup (SIGILL); see bench/build_llama_cpp.sh")
print("- both tools run at top priority in their own session (`setsid`, autogroup and nice -20), alternating")
print(f"- command: `BENCH_MODEL={'gemma3' if 'Gemma' in name else 'smollm2'} bash bench/run.sh` (arq: `arq bench MODEL --prompt-tokens 128 --gen-tokens 64 --threads T --reps {reps} --json`; peer: `llama-bench -m GGUF -p 128 -n 64 -t T -r {reps}`)\n")
print("DRAM share: generated tokens/s x weight bytes read per token (every matrix; the embedding when tied to the head) over the memory read bandwidth `arq bench --bandwidth --threads T` measured in the same round (1 GiB streamed). The kernel settings in force (`arq tune`'s cache or the defaults) are in `arq bench --json`'s `tuning`.\n")
print("| threads | arq | llama.cpp | prompt tok/s arq | prompt tok/s llama.cpp | ratio | gen tok/s arq | gen tok/s llama.cpp | ratio | read GB/s | DRAM share arq | DRAM share llama.cpp | arq peak RSS MiB | arq first token ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for t, q, peer, pp, lpp, tg, ltg, rss, load, gbs, sh, lsh in rows:
    print(f"| {t} | {q} | {peer} | {pp:.1f} | {lpp:.1f} | {pp/lpp:.2f} | {tg:.1f} | {ltg:.1f} | {tg/ltg:.2f} | {gbs:.1f} | {sh:.0f} % | {lsh:.0f} % | {rss/1048576:.0f} | {load:.0f} |")
PY
python3 bench/section.py bench/RESULTS.md "$section" < "$raw/section.md"
cat "$raw/section.md"
