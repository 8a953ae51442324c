#!/usr/bin/env bash
# Prepare the peer's (llama.cpp's) model files from one GGUF (default: SmolLM2-135M-
# Instruct's Q4_1 from models/fetch_smollm2.sh; bench/run.sh passes Gemma 3's Q4_K_M):
#   - a Q4_1: the source copied as is when it is a Q4_1, else requantized;
#   - a Q8_0 requantized with `llama-quantize --allow-requantize`.
# Requantizing dequantizes then quantizes, which is exactly what arq does for its q8
# and q4 weights, so both runtimes run on the same numbers.
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

src="${1:-$("$repo/models/fetch_smollm2.sh")}"
bin="${LLAMA_CPP_BIN:-$("$here/build_llama_cpp.sh")}"

models="$cache/models"
mkdir -p "$models"
stem=$(basename "$src" .gguf)
base="${stem%.Q4_1}"
q41="$models/$base.Q4_1.gguf"
q80="$models/$base.Q8_0.gguf"

# requant TYPE OUT: OUT from the source by llama-quantize, unless it is newer.
requant() {
  if [ ! -s "$2" ] || [ "$src" -nt "$2" ]; then
    log "requantizing $stem -> $1"
    "$bin/llama-quantize" --allow-requantize "$src" "$2.part" "$1" > "$models/quantize-$base-$1.log" 2>&1 || {
      cat "$models/quantize-$base-$1.log" >&2; rm -f "$2.part"; exit 1; }
    mv "$2.part" "$2"
  fi
}

if [ "$stem" != "$base" ]; then
  if [ ! -s "$q41" ] || ! cmp -s "$src" "$q41"; then
    log "copying $src"
    cp "$src" "$q41.part"
    mv "$q41.part" "$q41"
  fi
else
  requant Q4_1 "$q41"
fi
requant Q8_0 "$q80"

echo "$q41"
echo "$q80"
