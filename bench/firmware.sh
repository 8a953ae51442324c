#!/usr/bin/env bash
# The Cortex-M4F firmware's footprint from its linked ELF (scripts/test-firmware.sh builds
# it, runs it in qemu and checks it), written to its section of bench/RESULTS.md.
# qemu does not model timing: no speed is reported here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
bash scripts/test-firmware.sh > "$out" 2>&1 || { cat "$out"; exit 1; }
line=$(grep '^firmware pixelcnn:' "$out")
{
  echo "## Cortex-M4F firmware footprint"
  echo
  echo "From the linked ELF of \`firmware/pixelcnn\` (thumbv7em-none-eabihf, release, LTO), built and run by"
  echo "\`bash bench/firmware.sh\` (which runs \`scripts/test-firmware.sh\`), commit $(git rev-parse --short HEAD), $(date -u +%F)."
  echo "The stack is the firmware's own measured high-water mark (painted at start-up)."
  echo
  echo "| demo | flash bytes | RAM bytes |"
  echo "|---|---|---|"
  python3 - "$line" <<'PY'
import re, sys
m = re.search(r"flash (\d+) bytes \(code and constants (\d+) \+ model (\d+)\), RAM (\d+) bytes \(arena (\d+) \+ statics (\d+) \+ stack (\d+)", sys.argv[1])
f, code, model, ram, arena, statics, stack = m.groups()
print(f"| digits17 PixelCNN (q8): 2 samples + 1 score | {f} (code and constants {code} + model {model}) | {ram} (arena {arena} + statics {statics} + stack {stack}) |")
PY
  echo
  echo "The arena is checked against a pinned value in the test command (fails above +3%)."
} > "$out.md"
python3 bench/section.py bench/RESULTS.md firmware < "$out.md"
cat "$out.md"
rm -f "$out.md"
