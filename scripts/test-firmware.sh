#!/usr/bin/env bash
# The Cortex-M4F firmware, demo 2 (firmware/pixelcnn): builds it for thumbv7em-none-eabihf
# with Debian's rustc-web (-Zbuild-std), runs it on qemu's mps2-an386 board, decodes its
# defmt log with defmt-print, and checks it against the host `arq` on the same model,
# seed and sampler (the integer path is exact, so everything must match exactly):
#   - qemu's exit code is 0 (the firmware exits through semihosting);
#   - the firmware runs the `dsp` kernel tier (what kernels::best() picks on a Cortex-M4);
#   - the arena's memory plan fits the static arena the build sized;
#   - the two sampled digits (seed 7, image i seeded 7 + i) print the same ASCII art as
#     `arq sample --ascii`, and have the same levels as its --npy output, on the dsp
#     tier and again on the scalar tier;
#   - the NLL of test image 0 is bit-identical to `arq score --json --per-image`'s, on
#     both tiers;
#   - the instruction counter (qemu -icount shift=0, SysTick; firmware/README.md) reads
#     a loop of 2,000,000 known instructions to within its precision, and the dsp tier
#     runs the work in at most 1/1.5 of the scalar tier's instructions.
# Then reports the instructions per image of each tier (`firmware pixelcnn
# instructions:` line) and the footprint from the linked ELF: flash (code + model) and
# RAM (arena, other statics, measured stack).
#
# Prints one `e2e: PASS|FAIL ...` line per check and a closing line in cargo's format
# (`test result: ok. N passed; 0 failed; ...`) so scripts/test-all.sh can count them;
# exits non-zero if any check fails. Installs what it needs (idempotently).
#
# Environment: ARQ_FW_TARGET_DIR overrides the firmware's build folder (default
# firmware/pixelcnn/target); ARQ_QEMU_TIMEOUT the seconds qemu may run (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
source scripts/firmware-lib.sh
fw_prepare

start=$SECONDS
model=models/pixelcnn/digits17-q8.arq
digits_test=models/pixelcnn/digits_test.npy
fw_build pixelcnn
fw_host_arq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

show() { # show LABEL FILE
  echo "---- $1"
  if [ -s "$2" ]; then
    LC_ALL=C cat -v "$2" | head -c 4000
    echo
  else
    echo "(empty)"
  fi
}

echo "== host reference: arq sample -n 2 --seed 7 --ascii; arq score --per-image"
"$host_arq" sample "$model" -n 2 --seed 7 --temp 1 -o "$work/host.png" --npy "$work/host.npy" --ascii \
  >"$work/host_ascii.txt"
"$host_arq" score "$model" "$digits_test" --json --per-image >"$work/host_score.json"

fw_run "$elf" "$work"
fw_check_exit "$work" firmware

best=$(sed -nE 's/.*kernels: ([a-z0-9]+) \(kernels::best\(\)\).*/\1/p' "$work/log.txt" | head -n 1)
if [ "$best" = dsp ]; then
  pass "the firmware runs the dsp kernel tier (kernels::best() on the Cortex-M4)"
else
  fail "the firmware runs kernel tier '${best:-?}', expected dsp"
fi

# The arena, pinned at the memory plan of digits17 at 8x8 when this was written.
fw_check_arena "$work" 50431

# ASCII art: the firmware prints `art|ROW|` lines (the bars keep trailing spaces
# visible), 8 per image; the host prints the rows and a blank line after each image.
python3 - "$work/log.txt" "$work/fw_ascii.txt" <<'EOF'
import sys
rows = [l.split("art|", 1)[1].rsplit("|", 1)[0] for l in open(sys.argv[1]) if "art|" in l]
with open(sys.argv[2], "w") as f:
    for i in range(0, len(rows), 8):
        f.write("".join(r + "\n" for r in rows[i:i + 8]) + "\n")
EOF
if [ -s "$work/host_ascii.txt" ] && cmp -s "$work/host_ascii.txt" "$work/fw_ascii.txt"; then
  pass "2 sampled digits (seed 7) print the same ASCII art as arq sample --ascii"
else
  fail "ASCII art differs from arq sample --ascii"
  show "host" "$work/host_ascii.txt"
  show "firmware" "$work/fw_ascii.txt"
fi

# Levels: `levels TIER I DIGITS` (base 36 digits, one per pixel) against the host's
# .npy, for both tiers.
if python3 - "$work/log.txt" "$work/host.npy" <<'EOF'; then
import sys
log, npy = sys.argv[1], open(sys.argv[2], "rb").read()
hlen = int.from_bytes(npy[8:10], "little")
data = npy[10 + hlen:]
fw = {}
for l in open(log):
    parts = l.split()
    if len(parts) >= 4 and parts[-4] == "levels":
        fw[(parts[-3], int(parts[-2]))] = bytes(int(c, 36) for c in parts[-1])
want = {(t, i): data[i * 64:(i + 1) * 64] for t in ("dsp", "scalar") for i in range(len(data) // 64)}
if fw != want or len(want) != 4:
    print("firmware:", {k: v.hex() for k, v in fw.items()})
    print("host:    ", {k: v.hex() for k, v in want.items()})
    sys.exit(1)
EOF
  pass "2 sampled digits have the same 64 levels as arq sample --npy, on the dsp and the scalar tier"
else
  fail "sampled levels differ from arq sample --npy"
fi

# NLL of test image 0, bit for bit, for both tiers.
if python3 - "$work/log.txt" "$work/host_score.json" <<'EOF'; then
import json, re, struct, sys
log = open(sys.argv[1]).read()
host = json.load(open(sys.argv[2]))["per_image"][0]
ok = True
for tier in ("dsp", "scalar"):
    m = re.search(r"score " + tier + r" test image 0: nll (\S+) nats, (\S+) bits/dim, nll bits (0x[0-9a-f]+)", log)
    if not m:
        print(f"no {tier} score line in the firmware log")
        ok = False
        continue
    fw = struct.unpack("<d", struct.pack("<Q", int(m.group(3), 16)))[0]
    rel = abs(fw - host) / abs(host)
    print(f"test image 0 ({tier}): firmware NLL {fw!r} nats ({m.group(2)} bits/dim), host {host!r} nats, relative difference {rel:.3g}")
    if float(m.group(1)) != fw:
        print("the printed NLL and its bits disagree")
        ok = False
    ok = ok and fw == host
sys.exit(0 if ok else 1)
EOF
  pass "NLL of test image 0 is bit-identical to arq score --per-image, on the dsp and the scalar tier"
else
  fail "NLL of test image 0 differs from arq score --per-image"
fi

# Instruction counts. First the counter's own check on a loop of known length.
fw_check_calibration "$work"
# Then each tier's counts per image, and the speed-up (a floor of 1.5x catches a tier
# that silently fell back to scalar code; it measured 2.0x when this was written).
if python3 - "$work/log.txt" "$work/icount.txt" <<'EOF'; then
import re, sys
log = open(sys.argv[1]).read()
n = {}
for tier in ("dsp", "scalar"):
    s = [int(m) for m in re.findall(r"instructions " + tier + r" sample \d+: (\d+) per image", log)]
    c = re.search(r"instructions " + tier + r" score: (\d+) per image", log)
    if len(s) != 2 or not c:
        print(f"missing instruction counts for the {tier} tier")
        sys.exit(1)
    n[tier] = (s[0], s[1], int(c.group(1)))
d, sc = n["dsp"], n["scalar"]
speedup = sum(sc) / sum(d)
per_pixel = lambda t: (t[0] + t[1]) // 2 // 64
line = (f"firmware pixelcnn instructions: dsp samples {d[0]} {d[1]} score {d[2]} per-pixel {per_pixel(d)}; "
        f"scalar samples {sc[0]} {sc[1]} score {sc[2]} per-pixel {per_pixel(sc)}; speed-up {speedup:.2f}x")
open(sys.argv[2], "w").write(line + "\n")
sys.exit(0 if speedup >= 1.5 else 1)
EOF
  pass "the dsp tier runs 2 samples + 1 score in at most 1/1.5 of the scalar tier's instructions"
else
  fail "the dsp tier is not 1.5x fewer instructions than scalar (or the counts are missing)"
fi


fw_footprint pixelcnn "$work" "$model"

[ -s "$work/icount.txt" ] && cat "$work/icount.txt"
echo "firmware end to end: $((SECONDS - start)) s in all"
finish_checks
