#!/usr/bin/env bash
# Prepare the peer's (llama.cpp's) model files for SmolLM2-135M-Instruct.
#
# From the Q4_1 GGUF fetched by models/fetch_smollm2.sh:
#   - copies the Q4_1 as is into the cache dir, and
#   - requantizes it to Q8_0 with `llama-quantize --allow-requantize`.
# Q4_1 -> Q8_0 dequantizes then quantizes, which is exactly what arq does for
# its Q8_0 weights, so both runtimes run on the same numbers.
#
# Idempotent. Prints the two GGUF paths (Q4_1, then Q8_0) on stdout.
#
# Env:
#   LLAMA_CPP_CACHE   cache dir, outside the repo (default /work/cache/llama.cpp)
#   LLAMA_CPP_BIN     bin dir with llama-quantize (default: from build_llama_cpp.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="${LLAMA_CPP_CACHE:-/work/cache/llama.cpp}"

log() { echo "[prepare_peer_models] $*" >&2; }

src=$("$repo/models/fetch_smollm2.sh")
bin="${LLAMA_CPP_BIN:-$("$here/build_llama_cpp.sh")}"

models="$cache/models"
mkdir -p "$models"
q41="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
q80="$models/SmolLM2-135M-Instruct.Q8_0.gguf"

if [ ! -s "$q41" ] || ! cmp -s "$src" "$q41"; then
  log "copying $src"
  cp "$src" "$q41.part"
  mv "$q41.part" "$q41"
fi

if [ ! -s "$q80" ] || [ "$q41" -nt "$q80" ]; then
  log "requantizing Q4_1 -> Q8_0"
  "$bin/llama-quantize" --allow-requantize "$q41" "$q80.part" Q8_0 \
    > "$models/quantize-Q8_0.log" 2>&1 || {
      cat "$models/quantize-Q8_0.log" >&2; rm -f "$q80.part"; exit 1; }
  mv "$q80.part" "$q80"
fi

echo "$q41"
echo "$q80"
