#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct, convert it to q8, generate text.
# No pipelines: a reader that exits early (`| head`) would kill `arq` with SIGPIPE, and
# under `set -o pipefail` end the script without a word.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(models/fetch_smollm2.sh)
# The test command passes the binary its workspace tests built (ARQ_HOST_BIN).
arq="${ARQ_HOST_BIN:-}"
if [ -z "$arq" ]; then
  cargo build --release -p arq-convert
  arq="${CARGO_TARGET_DIR:-target}/release/arq"
fi
out="$(dirname "$gguf")/smollm2-q8.arq"   # beside the GGUF (models/cache/, or ARQ_MODEL_CACHE)
[ -s "$out" ] || "$arq" convert "$gguf" -o "$out" --quant q8
summary=$("$arq" inspect "$out" --ctx 2048)
head -n 8 <<<"$summary"
"$arq" generate "$out" -p "Once upon a time" -n 64 --temp 0.8 --top-p 0.95 --seed 7
"$arq" generate "$out" --chat -p "What is the capital of France?" -n 48 --temp 0
