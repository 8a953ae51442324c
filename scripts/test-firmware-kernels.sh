#!/usr/bin/env bash
# The kernel tiers on the Cortex-M4F (firmware/kernels): builds the test firmware for
# thumbv7em-none-eabihf with Debian's rustc-web (-Zbuild-std), runs it on qemu's
# mps2-an386 board, decodes its defmt log with defmt-print, and checks:
#   - qemu's exit code is 0 (the firmware exits 0 only if every value matched);
#   - kernels::best() picks the `dsp` tier on the Cortex-M4;
#   - every dsp table entry matched kernels::scalar bit for bit, over a nonzero number
#     of cases, with the f16 conversion checked on all 65536 patterns.
#
# Prints one `e2e: PASS|FAIL ...` line per check and a closing line in cargo's format
# (`test result: ok. N passed; 0 failed; ...`) so scripts/test-all.sh can count them;
# exits non-zero if any check fails. Installs what it needs (idempotently).
#
# Environment: ARQ_FW_TARGET_DIR overrides the firmware's build folder (default
# firmware/kernels/target); ARQ_QEMU_TIMEOUT the seconds qemu may run (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

source scripts/lib.sh
apt_install rustc-web cargo-web rust-web-src lld qemu-system-arm
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v defmt-print >/dev/null; then
  echo "== installing defmt-print (crates.io, with rustup's cargo)"
  cargo install defmt-print --version 1.2.0 --locked
fi

start=$SECONDS
fw_dir=firmware/kernels
fw_target="${ARQ_FW_TARGET_DIR:-$root/$fw_dir/target}"
elf="$fw_target/thumbv7em-none-eabihf/release/arq-fw-kernels"

echo "== building the kernel test firmware (Debian's $(/usr/bin/rustc --version), thumbv7em-none-eabihf)"
t0=$SECONDS
(
  cd "$fw_dir"
  DEFMT_LOG=info RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$fw_target" \
    /usr/bin/cargo build --release -Zbuild-std=core,panic_abort
)
echo "firmware build: $((SECONDS - t0)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== running it under qemu (mps2-an386, Cortex-M4)"
qemu_rc=0
timeout "${ARQ_QEMU_TIMEOUT:-300}" qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
  -semihosting-config enable=on,target=native -kernel "$elf" >"$work/defmt.bin" 2>"$work/qemu.stderr" ||
  qemu_rc=$?
defmt-print -e "$elf" --log-format '{L} {s}' <"$work/defmt.bin" >"$work/log.txt" 2>"$work/defmt.stderr" || true
echo "---- firmware log (defmt-print)"
cat "$work/log.txt"
echo "----"

if [ "$qemu_rc" = 0 ]; then
  pass "kernel test firmware exits with code 0 under qemu"
else
  fail "kernel test firmware exit code $qemu_rc (1: a mismatch, panic or fault; 124: timed out)"
  head -c 4000 "$work/qemu.stderr" "$work/defmt.stderr" || true
fi

best=$(sed -nE 's/.*kernels: best ([a-z0-9]+).*/\1/p' "$work/log.txt" | head -n 1)
if [ "$best" = dsp ]; then
  pass "kernels::best() picks the dsp tier on the Cortex-M4"
else
  fail "kernels::best() picks '${best:-?}' on the Cortex-M4, expected dsp"
fi

read -r cases values mismatches < <(sed -nE 's/.*cases ([0-9]+), values compared ([0-9]+), mismatches ([0-9]+).*/\1 \2 \3/p' "$work/log.txt") || true
if [ -n "${cases:-}" ] && [ "$cases" -gt 0 ] && [ "$mismatches" = 0 ] && grep -q "result: PASS" "$work/log.txt"; then
  pass "every dsp table entry equals kernels::scalar bit for bit: $cases cases, $values values compared"
else
  fail "dsp against scalar: ${mismatches:-?} mismatches over ${cases:-?} cases"
fi

if grep -qE "f16_to_f32 \(all 65536 patterns\): 65536 cases, 0 mismatches" "$work/log.txt"; then
  pass "the dsp tier's f16 -> f32 conversion equals half's for all 65536 patterns"
else
  fail "the dsp tier's f16 -> f32 conversion differs from half's (or was not checked)"
fi

echo "firmware kernel tests: $((SECONDS - start)) s in all"
finish_checks
