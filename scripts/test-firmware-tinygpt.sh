#!/usr/bin/env bash
# The Cortex-M4F firmware, demo 1 (firmware/tinygpt): builds it for thumbv7em-none-eabihf
# with Debian's rustc-web (-Zbuild-std), runs it on qemu's mps2-an386 board, decodes its
# defmt log with defmt-print, and checks it against the host `arq` on the same model,
# prompt, seed, sampler and KV-cache storage (q8; the integer path is exact and the float
# order fixed, so everything must match exactly):
#   - qemu's exit code is 0 (the firmware exits through semihosting);
#   - the arena's memory plan fits the static arena the build sized, and stays within 3%
#     of the pinned value;
#   - the continuation of "Once upon a time, " (40 characters, seed 7) is the text of
#     `arq generate -p ... -n 40 --seed 7 --kv q8`;
#   - the top-3 next characters after each prefix, and their log-probabilities bit for
#     bit, are those of `arq next -p PREFIX --top 3 --json --kv q8`.
# Then reports the footprint from the linked ELF: flash (code + model) and RAM (arena,
# other statics, measured stack).
#
# Prints one `e2e: PASS|FAIL ...` line per check and a closing line in cargo's format so
# scripts/test-all.sh can count them; exits non-zero if any check fails. Installs what
# it needs (idempotently). ARQ_FW_TARGET_DIR overrides the firmware's build folder
# (default firmware/tinygpt/target); ARQ_QEMU_TIMEOUT the seconds qemu may run (300).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
source scripts/firmware-lib.sh
fw_prepare

start=$SECONDS
model=models/tinygpt/tinygpt-q8.arq
fw_build tinygpt
fw_host_arq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

prompt="Once upon a time, "
prefixes=("The sky is blu" "Here is a simple reci" "She looked at the ")
echo "== host reference: arq generate --seed 7 --kv q8; arq next --top 3 --kv q8"
"$host_arq" generate "$model" -p "$prompt" -n 40 --seed 7 --kv q8 --threads 1 >"$work/host_text.txt"
for i in "${!prefixes[@]}"; do
  "$host_arq" next "$model" -p "${prefixes[$i]}" --top 3 --json --kv q8 --threads 1 >"$work/host_next_$i.json"
done

fw_run "$elf" "$work"
fw_check_exit "$work" firmware
# The arena, pinned at the memory plan of tinygpt-q8 at context 64 with a q8 KV cache
# when this was written.
fw_check_arena "$work" 57279

# The runtime's own log line (its one logging shim, runtime/src/trace.rs, routed to
# defmt by the firmware's `defmt` feature).
if grep -q "arq: gpt2 model, 4 layers of 96, 4 heads, vocab 78, context 64, kernels dsp" "$work/log.txt"; then
  pass "the runtime logs its model load through defmt (trace shim)"
else
  fail "no runtime log line (arq: gpt2 model ...) in the firmware log"
fi

# The continuation: the firmware prints `text TIER|...|` with newlines escaped as \n, for
# the dsp tier and then the scalar tier; the host prints the prompt, the continuation
# and one newline.
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
  pass "the continuation of \"$prompt\" (seed 7) on the dsp and the scalar tier equals arq generate --kv q8's"
else
  fail "the continuation differs from arq generate --kv q8's"
fi

# Top-3 next characters: `next TIER|PREFIX|ID|CHAR|PROB|LOGPROB_BITS` lines against the
# JSON, for both tiers.
if python3 - "$work/log.txt" "$work" "${prefixes[@]}" <<'PY'; then
import json, re, struct, sys
log, work, prefixes = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for tier, rest in re.findall(r"next (\w+)\|(.*)$", open(log).read(), re.M):
    prefix, i, _ch, _p, bits = rest.split("|")
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
  pass "top-3 next characters after ${#prefixes[@]} prefixes on both tiers, log-probabilities bit-identical to arq next --kv q8"
else
  fail "top-3 next characters differ from arq next --kv q8"
fi


# Instructions: `instructions TIER: prompt P (p per token), generation G (g per token, ...)`.
fw_check_calibration "$work"
if python3 - "$work/log.txt" >"$work/icount.txt" <<'PY'; then
import re, sys
log = open(sys.argv[1]).read()
c = {t: (int(p), int(g)) for t, p, g in re.findall(r"instructions (\w+): prompt \d+ \((\d+) per token\), generation \d+ \((\d+) per token", log)}
d, s = c["dsp"], c["scalar"]
print(f"firmware tinygpt instructions: dsp prompt {d[0]} generation {d[1]} per token; "
      f"scalar prompt {s[0]} generation {s[1]} per token; speed-up {s[1] / d[1]:.2f}x")
sys.exit(0 if 1.5 * d[1] <= s[1] else 1)
PY
  pass "the dsp tier generates a token in at most 1/1.5 of the scalar tier's instructions"
else
  fail "the dsp tier is not 1.5x fewer instructions per token than scalar (or the counts are missing)"
fi

fw_footprint tinygpt "$work" "$model"

[ -s "$work/icount.txt" ] && cat "$work/icount.txt"
echo "firmware tinygpt end to end: $((SECONDS - start)) s in all"
finish_checks
