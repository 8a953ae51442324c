#!/usr/bin/env bash
# The GPU backend (wgpu compute shaders for the q8 matrix products) against the CPU
# backend: `arq bench` on SmolLM2-135M-Instruct q8, prompt and generation tokens/s, on
# whatever adapter wgpu finds (recorded in the table). On lavapipe (Mesa's Vulkan driver
# on the CPU, what CI has) the GPU numbers only prove that the path runs: its "GPU" is
# the same CPU cores, behind a driver. Writes its section of bench/RESULTS.md.
#
# Env: GPU_BENCH_REPS (default 2), GPU_BENCH_PROMPT (default 64), GPU_BENCH_GEN (default 16),
# ARQ_SMOLLM2_GGUF (else models/fetch_smollm2.sh fetches it).
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${GPU_BENCH_REPS:-2}"
prompt="${GPU_BENCH_PROMPT:-64}"
gen="${GPU_BENCH_GEN:-16}"
cargo build --release -q -p arq-convert --bin arq
arq="${CARGO_TARGET_DIR:-target}/release/arq"
gguf="${ARQ_SMOLLM2_GGUF:-$(models/fetch_smollm2.sh)}"
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
"$arq" convert "$gguf" -o "$raw/smollm2-q8.arq" --quant q8 --no-calib >&2
threads=$(nproc)
for backend in cpu gpu; do
  echo "bench $backend" >&2
  "$arq" bench "$raw/smollm2-q8.arq" --backend "$backend" --threads "$threads" \
    --prompt-tokens "$prompt" --gen-tokens "$gen" --reps "$reps" --json > "$raw/$backend.json"
done

cpu=$(bash bench/cpu.sh)
commit=$(git rev-parse --short HEAD)
python3 - "$raw" "$cpu" "$commit" "$reps" "$threads" > "$raw/section.md" <<'PY'
import json, sys, datetime
raw, cpu, commit, reps, threads = sys.argv[1:]
c, g = (json.load(open(f"{raw}/{b}.json")) for b in ("cpu", "gpu"))
print("## GPU backend (wgpu) vs CPU\n")
print("SmolLM2-135M-Instruct q8, `arq bench` with `--backend cpu` and `--backend gpu` in the same run,")
print(f"{c['prompt_tokens']}-token prompt, {c['gen_tokens']} generated tokens, medians over {reps} reps after a warm-up,")
print(f"{threads} CPU threads for the CPU work of both. The GPU backend runs the q8 matrix products as WGSL")
print("compute shaders (`dot4I8Packed`); norms, RoPE, attention and the KV cache stay on the CPU.\n")
print(f"- machine: {cpu}; GPU adapter: **{g['adapter']}**")
print(f"- arq commit {commit}, date {datetime.date.today()}")
print("- command: `bash bench/gpu.sh` (`arq bench smollm2-q8.arq --backend cpu|gpu --json`)\n")
print("| backend | adapter | prompt tok/s | generation tok/s | share of time in GPU calls | load ms |")
print("|---|---|---|---|---|---|")
for b, d in (("cpu", c), ("gpu", g)):
    share = "" if d.get("gpu_time_share") is None else f"{100 * d['gpu_time_share']:.0f} %"
    print(f"| {b} | {d.get('adapter') or '-'} | {d['prompt_tokens_per_s']:.1f} | {d['gen_tokens_per_s']:.1f} | {share} | {d['load_ms']:.0f} |")
if "llvmpipe" in (g["adapter"] or "").lower():
    print("\nThe adapter is lavapipe (llvmpipe), Mesa's Vulkan driver that runs shaders on the CPU: this row only")
    print("proves the Vulkan path runs end to end. It competes with the CPU backend for the same cores through a")
    print("driver, so it is slower by construction; it says nothing about a real GPU.")
PY
python3 bench/section.py bench/RESULTS.md gpu < "$raw/section.md"
cat "$raw/section.md"
