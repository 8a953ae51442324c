#!/usr/bin/env bash
# The runtime crate's whole test suite cross-built for aarch64-unknown-linux-gnu with
# Debian's rustc-web (-Zbuild-std) and run under qemu-aarch64-static twice:
#   1. qemu's default CPU, which has dotprod: tiers scalar, neon, dotprod;
#   2. -cpu cortex-a53 (a Raspberry Pi 3 core, no dotprod): tiers scalar, neon.
# Each run pins the tiers it expects through ARQ_EXPECT_TIERS, which the kernel test
# `detected_tiers_match_arq_expect_tiers` checks. Installs what it needs (idempotently).
# A cold run builds std for aarch64 first (a few minutes on 2 cores); qemu times say
# nothing about a real Pi.
#
# Environment: ARQ_AARCH64_TARGET_DIR overrides the build folder (default target/aarch64).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
apt_install rustc-web cargo-web rust-web-src lld gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${ARQ_AARCH64_TARGET_DIR:-target/aarch64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
qemu="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
cargo_test=(/usr/bin/cargo test --release -Zbuild-std=std,panic_abort
  --target aarch64-unknown-linux-gnu -p arq --features std)

# run_suite LABEL QEMU_CPU_ARGS EXPECTED_TIERS
run_suite() {
  local label=$1 cpu_args=$2 tiers=$3
  echo
  echo "== aarch64 runtime tests under qemu ($label): expecting tiers $tiers"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$qemu $cpu_args"
  ARQ_EXPECT_TIERS=$tiers "${cargo_test[@]}"
  # The detected tiers, for the log (the run above already asserted them).
  "${cargo_test[@]}" -q detected_tiers_match_arq_expect_tiers -- --nocapture 2>&1 | grep "detected tiers"
}

echo "== cross-building the runtime tests for aarch64 (Debian's $("$RUSTC" --version))"
"${cargo_test[@]}" --no-run

run_suite "default CPU" "" scalar,neon,dotprod
run_suite "-cpu cortex-a53" "-cpu cortex-a53" scalar,neon

echo
echo "aarch64 tests: ok (dotprod tier on the default CPU, neon tier on cortex-a53)"
