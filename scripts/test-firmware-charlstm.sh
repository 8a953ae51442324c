#!/usr/bin/env bash
# The Cortex-M4F firmware, demo 3 (firmware/charlstm): the character-level LSTM
# (models/rnn/char-lstm-q8.arq) built for thumbv7em-none-eabihf with Debian's rustc-web
# (-Zbuild-std), run on qemu's mps2-an386 board, its defmt log checked against the host
# `arq` on the same model, prompt, seed and sampler (the integer path is exact and the
# float order fixed, so everything must match exactly):
#   - qemu's exit code is 0;
#   - the arena's memory plan fits the static arena and stays within 3% of the pinned value;
#   - the continuation of "To be, or not to be" (60 characters, seed 7) on the dsp and the
#     scalar tier is the text of `arq generate -p ... -n 60 --seed 7`;
#   - the top-3 next characters after each prefix, their log-probabilities bit for bit,
#     are those of `arq next -p PREFIX --top 3 --json`.
# Then the instructions per character on both tiers and the footprint (flash, RAM).
# Prints one `e2e: PASS|FAIL ...` line per check and a closing line in cargo's format.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
source scripts/firmware-lib.sh
fw_prepare

start=$SECONDS
model=models/rnn/char-lstm-q8.arq
fw_build charlstm
fw_host_arq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

prompt="To be, or not to be"
prefixes=("My lord, I" "What is the matt" $'KING.\n')
echo "== host reference: arq generate --seed 7; arq next --top 3"
"$host_arq" generate "$model" -p "$prompt" -n 60 --seed 7 --threads 1 >"$work/host_text.txt"
for i in "${!prefixes[@]}"; do
  "$host_arq" next "$model" -p "${prefixes[$i]}" --top 3 --json --threads 1 >"$work/host_next_$i.json"
done

fw_run "$elf" "$work"
fw_check_exit "$work" firmware
# The arena, pinned at the memory plan of char-lstm-q8 when this was written.
fw_check_arena "$work" 7295

if python3 - "$work/log.txt" "$work/host_text.txt" <<'PY'; then
import re, sys
fw = re.findall(r"text (\w+)\|(.*)\|$", open(sys.argv[1]).read(), re.M)
host = open(sys.argv[2]).read()
host = host[:-1] if host.endswith("\n") else host
host = host.replace("\\", "\\\\").replace("\n", "\\n")
for tier, text in fw:
    print(f"firmware {tier}: {text!r}")
print(f"host:         {host!r}")
sys.exit(0 if [t for _, t in fw] == [host, host] and [k for k, _ in fw] == ["dsp", "scalar"] else 1)
PY
  pass "the continuation of \"$prompt\" (seed 7) on the dsp and the scalar tier equals arq generate's"
else
  fail "the continuation differs from arq generate's"
fi

if python3 - "$work/log.txt" "$work" "${prefixes[@]}" <<'PY'; then
import json, re, struct, sys
log, work, prefixes = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for tier, rest in re.findall(r"next (\w+)\|(.*)$", open(log).read(), re.M):
    prefix, i, _ch, bits = rest.split("|")
    rows.setdefault((tier, prefix), []).append((int(i), struct.unpack("<d", struct.pack("<Q", int(bits, 16)))[0]))
ok = True
for k, prefix in enumerate(prefixes):
    host = [(t["id"], t["logprob"]) for t in json.load(open(f"{work}/host_next_{k}.json"))["top"]]
    for tier in ("dsp", "scalar"):
        fw = rows.get((tier, prefix.replace("\\", "\\\\").replace("\n", "\\n")), [])
        ok &= fw == host
        print(f"{'same' if fw == host else 'DIFFERENT'} after {prefix!r} ({tier}): firmware {fw}, host {host}")
sys.exit(0 if ok else 1)
PY
  pass "top-3 next characters after ${#prefixes[@]} prefixes on both tiers, log-probabilities bit-identical to arq next"
else
  fail "top-3 next characters differ from arq next"
fi

fw_check_calibration "$work"
if python3 - "$work/log.txt" >"$work/icount.txt" <<'PY'; then
import re, sys
log = open(sys.argv[1]).read()
c = {t: (int(p), int(g)) for t, p, g in re.findall(r"instructions (\w+): prompt \d+ \((\d+) per character\), generation \d+ \((\d+) per character", log)}
d, s = c["dsp"], c["scalar"]
print(f"firmware charlstm instructions: dsp prompt {d[0]} generation {d[1]} per character; "
      f"scalar prompt {s[0]} generation {s[1]} per character; speed-up {s[1] / d[1]:.2f}x")
sys.exit(0 if 1.5 * d[1] <= s[1] else 1)
PY
  pass "the dsp tier generates a character in at most 1/1.5 of the scalar tier's instructions"
else
  fail "the dsp tier is not 1.5x fewer instructions per character than scalar (or the counts are missing)"
fi

fw_footprint charlstm "$work" "$model"
[ -s "$work/icount.txt" ] && cat "$work/icount.txt"
echo "firmware charlstm end to end: $((SECONDS - start)) s in all"
finish_checks
