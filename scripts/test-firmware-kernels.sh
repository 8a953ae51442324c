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

source scripts/lib.sh
source scripts/firmware-lib.sh
fw_prepare

start=$SECONDS
fw_build kernels

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fw_run "$elf" "$work"
fw_check_exit "$work" "kernel test firmware"

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
