#!/usr/bin/env bash
# `arq serve` checked by code we did not write: the official `openai` Python client and
# curl against SmolLM2 q8 (tests/serve/openai_client.py), and Debian's Chromium, headless,
# driven by Selenium, against the text page (tinygpt) and the PixelCNN page (digits)
# (tests/serve/browser.py; screenshots in target/serve-screenshots/).
# Installs chromium, chromium-driver and curl from Debian and a virtual environment with
# openai and selenium (outside the repo, reused by later runs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
apt_install chromium chromium-driver curl

venv="${XDG_CACHE_HOME:-$HOME/.cache}/arq/venv-serve"
if ! "$venv/bin/python" -c "import openai, selenium" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40" "selenium>=4.20"
fi

arq="${ARQ_HOST_BIN:-}"
if [ -z "$arq" ]; then
  cargo build --release -p arq-convert --bin arq
  arq="${CARGO_TARGET_DIR:-target}/release/arq"
fi
gguf="${ARQ_SMOLLM2_GGUF:-$(models/fetch_smollm2.sh)}"
smollm2="$(dirname "$gguf")/smollm2-q8.arq"
[ -s "$smollm2" ] || "$arq" convert "$gguf" -o "$smollm2" --quant q8

logs=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$logs"' EXIT
# serve NAME MODEL ARGS...: starts a server on a free port; its base URL in $url.
serve() {
  local name=$1 model=$2
  shift 2
  "$arq" serve "$model" --port 0 "$@" 2>"$logs/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do
    url=$(sed -n 's|^arq serve: listening on \(http://[^ ]*\)/$|\1|p' "$logs/$name.log")
    [ -n "$url" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "arq serve $model did not start:" >&2
  cat "$logs/$name.log" >&2
  return 1
}

serve smollm2 "$smollm2" --slots 2
"$venv/bin/python" tests/serve/openai_client.py "$url/v1"
serve tinygpt models/tinygpt/tinygpt-q8.arq
text_url=$url
serve digits models/pixelcnn/digits17-q8.arq
"$venv/bin/python" tests/serve/browser.py "$text_url/" "$url/" target/serve-screenshots
