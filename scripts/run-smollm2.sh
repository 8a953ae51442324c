#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct, convert it to q8, generate text.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(models/fetch_smollm2.sh)
cargo build --release -p arq-convert
arq=target/release/arq
out=models/cache/smollm2-q8.arq
[ -s "$out" ] || "$arq" convert "$gguf" -o "$out" --quant q8
"$arq" inspect "$out" --ctx 2048 | head -8
"$arq" generate "$out" -p "Once upon a time" -n 64 --temp 0.8 --top-p 0.95 --seed 7
"$arq" generate "$out" --chat -p "What is the capital of France?" -n 48 --temp 0
