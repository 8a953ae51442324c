#!/usr/bin/env bash
# The README's first command, tested: scripts/run-smollm2.sh must print the model
# summary and generated text, exit 0, and print the same text on every run (seeded
# sampling and greedy chat). Three runs, since the failure this guards against (a
# pipeline killed by SIGPIPE) struck only some of them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

runs=3
first=""
for i in $(seq 1 "$runs"); do
  out=$(mktemp)
  if bash scripts/run-smollm2.sh >"$out" 2>"$out.err"; then
    pass "run $i: scripts/run-smollm2.sh exited 0"
  else
    fail "run $i: scripts/run-smollm2.sh exited $? ($(tail -n 1 "$out.err"))"
  fi
  # Line 1..8: `arq inspect`; the rest: the two generations.
  text=$(tail -n +9 "$out")
  letters=$(tr -cd '[:alpha:]' <<<"$text" | wc -c)
  if [ "$letters" -ge 100 ]; then
    pass "run $i: printed $letters letters of generated text"
  else
    fail "run $i: printed only $letters letters after the summary"
  fi
  if [ -z "$first" ]; then
    first=$(cat "$out")
    sed 's/^/  | /' "$out"
  elif [ "$(cat "$out")" == "$first" ]; then
    pass "run $i: same output as run 1"
  else
    fail "run $i: output differs from run 1"
  fi
  rm -f "$out" "$out.err"
done
finish_checks
