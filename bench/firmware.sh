#!/usr/bin/env bash
# The Cortex-M4F firmware's footprint from its linked ELF and its guest instructions per
# image from qemu (scripts/test-firmware.sh builds it, runs it in qemu with
# -icount shift=0 and checks it), written to its section of bench/RESULTS.md.
# qemu does not model timing: instruction counts are reported, never qemu wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
bash scripts/test-firmware.sh > "$out" 2>&1 || { cat "$out"; exit 1; }
line=$(grep '^firmware pixelcnn:' "$out")
icount=$(grep '^firmware pixelcnn instructions:' "$out")
{
  echo "## Cortex-M4F firmware: footprint and instructions per image"
  echo
  echo "From the linked ELF of \`firmware/pixelcnn\` (thumbv7em-none-eabihf, release, LTO), built and run by"
  echo "\`bash bench/firmware.sh\` (which runs \`scripts/test-firmware.sh\`), commit $(git rev-parse --short HEAD), $(date -u +%F)."
  echo "The stack is the firmware's own measured high-water mark (painted at start-up). Instructions are"
  echo "guest instructions counted under qemu \`-icount shift=0\` (1 ns of virtual time per instruction, read"
  echo "from SysTick at 25 MHz: precise to ±40 instructions per measurement; see \`firmware/README.md\`), for"
  echo "the same work on the \`dsp\` tier (SMLAD, what \`kernels::best()\` picks on a Cortex-M4) and the"
  echo "\`scalar\` tier; both give bit-identical images and NLL. Instructions, not cycles: no wall time."
  echo
  python3 - "$line" "$icount" <<'PY'
import re, sys
m = re.search(r"flash (\d+) bytes \(code and constants (\d+) \+ model (\d+)\), RAM (\d+) bytes \(arena (\d+) \+ statics (\d+) \+ stack (\d+)", sys.argv[1])
f, code, model, ram, arena, statics, stack = m.groups()
i = re.search(r"dsp samples (\d+) (\d+) score (\d+) per-pixel (\d+); scalar samples (\d+) (\d+) score (\d+) per-pixel (\d+); speed-up ([\d.]+)x", sys.argv[2])
d0, d1, ds, dp, s0, s1, ss, sp, speedup = i.groups()
n = lambda v: f"{int(v):,}"
sample = lambda a, b: (int(a) + int(b)) // 2
print("| demo | flash bytes | RAM bytes |")
print("|---|---|---|")
print(f"| digits17 PixelCNN (q8): 2 samples + 1 score | {f} (code and constants {code} + model {model}) | {ram} (arena {arena} + statics {statics} + stack {stack}) |")
print()
print("| instructions | `dsp` tier | `scalar` tier | scalar / dsp |")
print("|---|---:|---:|---:|")
print(f"| per sampled image (mean of 2; 64 pixels) | {n(sample(d0, d1))} | {n(sample(s0, s1))} | {sample(s0, s1) / sample(d0, d1):.2f}x |")
print(f"| per generated pixel (token) | {n(dp)} | {n(sp)} | {int(sp) / int(dp):.2f}x |")
print(f"| per scored image (NLL of test image 0) | {n(ds)} | {n(ss)} | {int(ss) / int(ds):.2f}x |")
print(f"| all: 2 samples + 1 score | {n(int(d0) + int(d1) + int(ds))} | {n(int(s0) + int(s1) + int(ss))} | {speedup}x |")
PY
  echo
  echo "The arena is checked against a pinned value in the test command (fails above +3%)."
} > "$out.md"
python3 bench/section.py bench/RESULTS.md firmware < "$out.md"
cat "$out.md"
rm -f "$out.md"
