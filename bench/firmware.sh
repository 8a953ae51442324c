#!/usr/bin/env bash
# The Cortex-M4F firmwares' footprints from their linked ELFs and their guest instructions
# per image (PixelCNN), per token (tinygpt) and per character (charlstm) from qemu
# (scripts/test-firmware.sh, scripts/test-firmware-tinygpt.sh and
# scripts/test-firmware-charlstm.sh build them, run them in qemu with -icount shift=0 and
# check them), written to their two sections of bench/RESULTS.md (firmware,
# firmware-charlstm).
# qemu does not model timing: instruction counts are reported, never qemu wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
bash scripts/test-firmware.sh > "$out" 2>&1 || { cat "$out"; exit 1; }
line=$(grep '^firmware pixelcnn:' "$out")
icount=$(grep '^firmware pixelcnn instructions:' "$out")
bash scripts/test-firmware-tinygpt.sh > "$out" 2>&1 || { cat "$out"; exit 1; }
tg_line=$(grep '^firmware tinygpt:' "$out")
tg_icount=$(grep '^firmware tinygpt instructions:' "$out")
bash scripts/test-firmware-charlstm.sh > "$out" 2>&1 || { cat "$out"; exit 1; }
cl_line=$(grep '^firmware charlstm:' "$out")
cl_icount=$(grep '^firmware charlstm instructions:' "$out")
{
  echo "## Cortex-M4F firmware: footprint, instructions per image and per token"
  echo
  echo "From the linked ELFs of \`firmware/pixelcnn\` and \`firmware/tinygpt\` (thumbv7em-none-eabihf, release, LTO), built and run by"
  echo "\`bash bench/firmware.sh\` (which runs \`scripts/test-firmware.sh\` and \`scripts/test-firmware-tinygpt.sh\`), commit $(git rev-parse --short HEAD), $(date -u +%F)."
  echo "The stack is the firmware's own measured high-water mark (painted at start-up). Instructions are"
  echo "guest instructions counted under qemu \`-icount shift=0\` (1 ns of virtual time per instruction, read"
  echo "from SysTick at 25 MHz: precise to ±40 instructions per measurement; see \`firmware/README.md\`), for"
  echo "the same work on the \`dsp\` tier (SMLAD, what \`kernels::best()\` picks on a Cortex-M4) and the"
  echo "\`scalar\` tier; both give bit-identical images and NLL. Instructions, not cycles: no wall time."
  echo
  python3 - "$line" "$icount" "$tg_line" "$tg_icount" <<'PY'
import re, sys
foot = lambda l: re.search(r"flash (\d+) bytes \(code and constants (\d+) \+ model (\d+)\), RAM (\d+) bytes \(arena (\d+) \+ statics (\d+) \+ stack (\d+)", l).groups()
f, code, model, ram, arena, statics, stack = foot(sys.argv[1])
tf, tcode, tmodel, tram, tarena, tstatics, tstack = foot(sys.argv[3])
i = re.search(r"dsp samples (\d+) (\d+) score (\d+) per-pixel (\d+); scalar samples (\d+) (\d+) score (\d+) per-pixel (\d+); speed-up ([\d.]+)x", sys.argv[2])
d0, d1, ds, dp, s0, s1, ss, sp, speedup = i.groups()
n = lambda v: f"{int(v):,}"
sample = lambda a, b: (int(a) + int(b)) // 2
print("| demo | flash bytes | RAM bytes |")
print("|---|---|---|")
print(f"| 1: tinygpt, character-level GPT-2 (q8, q8 KV cache, context 64): 40-character continuation + 3 top-3 ranks, on 2 tiers | {tf} (code and constants {tcode} + model {tmodel}) | {tram} (arena {tarena} + statics {tstatics} + stack {tstack}) |")
print(f"| 2: digits17 PixelCNN (q8): 2 samples + 1 score, on 2 tiers | {f} (code and constants {code} + model {model}) | {ram} (arena {arena} + statics {statics} + stack {stack}) |")
print()
print("| instructions | `dsp` tier | `scalar` tier | scalar / dsp |")
print("|---|---:|---:|---:|")
print(f"| per sampled image (mean of 2; 64 pixels) | {n(sample(d0, d1))} | {n(sample(s0, s1))} | {sample(s0, s1) / sample(d0, d1):.2f}x |")
print(f"| per generated pixel (token) | {n(dp)} | {n(sp)} | {int(sp) / int(dp):.2f}x |")
print(f"| per scored image (NLL of test image 0) | {n(ds)} | {n(ss)} | {int(ss) / int(ds):.2f}x |")
print(f"| all: 2 samples + 1 score | {n(int(d0) + int(d1) + int(ds))} | {n(int(s0) + int(s1) + int(ss))} | {speedup}x |")
t = re.search(r"dsp prompt (\d+) generation (\d+) per token; scalar prompt (\d+) generation (\d+) per token", sys.argv[4]).groups()
print()
print("| tinygpt instructions per token | `dsp` tier | `scalar` tier | scalar / dsp |")
print("|---|---:|---:|---:|")
print(f"| prompt (18 characters, one per pass) | {n(t[0])} | {n(t[2])} | {int(t[2]) / int(t[0]):.2f}x |")
print(f"| generated (40 characters, positions 18..57; sampling included) | {n(t[1])} | {n(t[3])} | {int(t[3]) / int(t[1]):.2f}x |")
PY
  echo
  echo "Each demo's arena is checked against a pinned value in the test command (fails above +3%)."
} > "$out.md"
python3 bench/section.py bench/RESULTS.md firmware < "$out.md"
cat "$out.md"

# The character LSTM beside the tiny GPT (scripts/test-firmware-charlstm.sh).
{
  echo "## Cortex-M4F firmware: the character LSTM beside the tiny GPT"
  echo
  echo "\`firmware/charlstm\` (thumbv7em-none-eabihf, release, LTO), built and run by"
  echo "\`bash bench/firmware.sh\` (which runs \`scripts/test-firmware-charlstm.sh\`; qemu mps2-an386, \`-icount shift=0\`), commit $(git rev-parse --short HEAD),"
  echo "$(date -u +%F); the tinygpt row is the table above's."
  python3 - "$cl_line" "$cl_icount" "$tg_line" "$tg_icount" <<'PY'
import json, re, sys
foot = lambda l: re.search(r"flash (\d+) bytes \(code and constants (\d+) \+ model (\d+)\), RAM (\d+) bytes \(arena (\d+) \+ statics (\d+) \+ stack (\d+)", l).groups()
f, code, model, ram, arena, statics, stack = foot(sys.argv[1])
tf, tcode, tmodel, tram, tarena, tstatics, tstack = foot(sys.argv[3])
c = re.search(r"dsp prompt (\d+) generation (\d+) per character; scalar prompt (\d+) generation (\d+) per character", sys.argv[2]).groups()
t = re.search(r"dsp prompt (\d+) generation (\d+) per token; scalar prompt (\d+) generation (\d+) per token", sys.argv[4]).groups()
r = json.load(open("models/rnn/reference.json"))["char-lstm"]
# An LSTM layer keeps h and c (f32) of nhid each.
state = r["nlayers"] * r["nhid"] * (2 if r["rnn"] == "LSTM" else 1) * 4
n = lambda v: f"{int(v):,}"
print(f"The LSTM (`models/rnn/char-lstm-q8.arq`, {r['nlayers']} layers of {r['nhid']}, embedding {r['emsize']}, {r['vocab']} characters,")
print(f"trained on Shakespeare's plays; held-out perplexity {r['perplexity']:.2f} per character, {__import__('math').log2(r['perplexity']):.2f} bits/char)")
print(f"keeps a {n(state)}-byte state: its arena is {n(arena)} bytes after any number of characters, where the GPT's KV cache")
print("fixes a context of 64. Text and top-3 ranks are bit-identical to the host `arq` on both tiers.")
print()
print("| demo | flash bytes | RAM bytes | arena | instructions per generated character, `dsp` / `scalar` |")
print("|---|---|---|---|---|")
print(f"| 3: char LSTM (q8): 60-character continuation + 3 top-3 ranks, on 2 tiers | {f} (code and constants {code} + model {model}) | {ram} (arena {arena} + statics {statics} + stack {stack}) | {n(arena)} bytes, any length | {n(c[1])} / {n(c[3])} ({int(c[3]) / int(c[1]):.2f}x) |")
print(f"| 1: tinygpt, character-level GPT-2 (q8, q8 KV cache, context 64) | {tf} (code and constants {tcode} + model {tmodel}) | {tram} (arena {tarena} + statics {tstatics} + stack {tstack}) | {n(tarena)} bytes, context 64 | {n(t[1])} / {n(t[3])} ({int(t[3]) / int(t[1]):.2f}x) |")
PY
} > "$out.md"
python3 bench/section.py bench/RESULTS.md firmware-charlstm < "$out.md"
cat "$out.md"
rm -f "$out.md"
