#!/usr/bin/env bash
# Every test of the project. Installs what it needs (idempotently), fetches SmolLM2 and
# Gemma 3 270M, runs the workspace tests in release mode, and builds the no_std engine for a
# Cortex-M4F with Debian's Rust toolchain so nothing std-only creeps into it.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
apt_install rustc-web cargo-web rust-web-src lld mesa-vulkan-drivers

echo "== fetching SmolLM2-135M-Instruct"
ARQ_SMOLLM2_GGUF=$(models/fetch_smollm2.sh)
export ARQ_SMOLLM2_GGUF

echo "== fetching Gemma 3 270M (end to end against transformers; its tokenizer against Hugging Face's ids)"
ARQ_GEMMA3_GGUF=$(models/fetch_gemma3.sh)
export ARQ_GEMMA3_GGUF
# The tiny models of every family (models/tiny/, committed) must be there.
export ARQ_TINY_REQUIRED=1

# Every cargo test summary line is collected for the closing count.
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# lavapipe (mesa-vulkan-drivers) is a Vulkan driver on the CPU: the GPU tests run the
# real Vulkan path on it, and fail instead of skipping when no adapter is found.
export ARQ_REQUIRE_GPU=1

echo "== workspace tests (release)"
cargo test --release --workspace 2>&1 | tee -a "$log"
# The arq binary those tests ran (CARGO_BIN_EXE_arq): the end-to-end scripts below
# reuse it instead of rebuilding it with another feature resolution.
export ARQ_HOST_BIN="${CARGO_TARGET_DIR:-target}/release/arq"

# Offsets and sizes read from files use checked arithmetic: the same tests with overflow
# checks on (profile `checked`) must behave as in release; includes the mutation loop
# over the committed models (runtime/tests/mutated_models.rs).
echo "== runtime and converter parser tests with overflow checks (profile checked)"
cargo test --profile checked -p arq --features std 2>&1 | tee -a "$log"
# The converter's own parsers (GGUF reader and importer, .npy and PNG readers) the same
# way; without the ONNX and GPU features, whose dependencies would be built again.
cargo test --profile checked -p arq-convert --no-default-features --lib --test gguf 2>&1 | tee -a "$log"

echo "== the README's main command: scripts/run-smollm2.sh prints text, the same on every run"
bash scripts/test-main-job.sh 2>&1 | tee -a "$log"

echo "== arq serve: the openai Python client and curl (SmolLM2), headless Chromium on the web pages"
bash scripts/test-serve.sh 2>&1 | tee -a "$log"

echo "== the Python package (python/, import arq): pytest against the CLI's --json output"
bash scripts/test-python.sh 2>&1 | tee -a "$log"

echo "== no_std build of the engine for thumbv7em-none-eabihf (Debian's rustc-web)"
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/cross \
  /usr/bin/cargo build --release -p arq --no-default-features \
  --target thumbv7em-none-eabihf -Zbuild-std=core
echo "no_std build: ok"

# The three firmwares share one build folder, so the -Zbuild-std core is built once.
export ARQ_FW_TARGET_DIR="$PWD/target/firmware"

echo "== Cortex-M4F firmware under qemu (mps2-an386): PixelCNN samples and score equal the host's"
bash scripts/test-firmware.sh 2>&1 | tee -a "$log"

echo "== Cortex-M4F firmware under qemu: tinygpt's text and next-character ranks equal the host's"
bash scripts/test-firmware-tinygpt.sh 2>&1 | tee -a "$log"

echo "== Cortex-M4F firmware under qemu: the character LSTM's text and next-character ranks equal the host's"
bash scripts/test-firmware-charlstm.sh 2>&1 | tee -a "$log"

echo "== Cortex-M4F kernel tiers under qemu: every dsp (SMLAD) kernel equals the scalar contract bit for bit"
bash scripts/test-firmware-kernels.sh 2>&1 | tee -a "$log"

echo "== aarch64 (Raspberry Pi class): the runtime's tests under qemu, NEON+dotprod and plain NEON tiers"
bash scripts/test-aarch64.sh 2>&1 | tee -a "$log"

echo "== aarch64 end to end: the arq CLI under qemu (generate, next, sample, score) equals x86, both tiers"
bash scripts/test-aarch64-cli.sh 2>&1 | tee -a "$log"

# One closing line over all runs above (x86 workspace, the Python package, the firmwares' checks, both
# aarch64 tiers, and the aarch64 CLI's end-to-end checks; the end-to-end scripts print
# one cargo-style `test result:` line each).
grep -E "^test result:" "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' |
  awk '{p += $1; f += $2} END {printf "Summary: %d passed, %d failed\n", p, f}'
