#!/usr/bin/env bash
# End to end on aarch64 (Raspberry Pi class): the `arq` CLI cross-built for
# aarch64-unknown-linux-gnu (Debian's rustc-web, -Zbuild-std, without the ONNX importer)
# runs `generate`, `next`, `sample` and `score` under qemu-aarch64-static on two CPUs:
#   1. qemu's default CPU, which has dotprod: kernel tier dotprod;
#   2. -cpu cortex-a53 (a Raspberry Pi 3 core, no dotprod): kernel tier neon.
# Every output must be byte-identical to the x86 build's for the same command and seed
# (all kernel tiers are bit-exact by design: kernels/scalar.rs fixes the summation order).
#
# Prints one `e2e: PASS|FAIL ...` line per check and a closing line in cargo's format
# (`test result: ok. N passed; 0 failed; ...`) so scripts/test-all.sh counts the checks;
# exits non-zero if any check fails. Installs what it needs (idempotently). qemu times
# say nothing about a real Pi.
#
# Environment: ARQ_AARCH64_TARGET_DIR overrides the cross build folder (default
# target/aarch64, shared with test-aarch64.sh so std is built once); ARQ_SMOLLM2_GGUF
# the SmolLM2 GGUF (default: what models/fetch_smollm2.sh prints).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
apt_install rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static

# The tiers must come from detection, not from a cap the caller left in the environment.
unset ARQ_MAX_ISA

start=$SECONDS
cross_dir="${ARQ_AARCH64_TARGET_DIR:-target/aarch64}"
echo "== cross-building arq for aarch64-unknown-linux-gnu (Debian's $(/usr/bin/rustc --version), no ONNX importer)"
RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$cross_dir" \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  /usr/bin/cargo build --release -Zbuild-std=std,panic_abort --target aarch64-unknown-linux-gnu \
  -p arq-convert --bin arq --no-default-features
arm_arq="$cross_dir/aarch64-unknown-linux-gnu/release/arq"

# The host arq: the one test-all.sh's workspace tests just built (ARQ_HOST_BIN; a plain
# `cargo build -p arq-convert` resolves features differently and would rebuild its
# dependencies), or a build of our own when run alone.
if [ -n "${ARQ_HOST_BIN:-}" ] && [ -x "$ARQ_HOST_BIN" ]; then
  host_arq=$ARQ_HOST_BIN
  echo "== host arq: $host_arq"
else
  echo "== building arq for the host"
  cargo build --release -p arq-convert --bin arq
  host_arq="${CARGO_TARGET_DIR:-target}/release/arq"
fi

echo "== models"
gguf="${ARQ_SMOLLM2_GGUF:-$(models/fetch_smollm2.sh)}"
smollm2=models/cache/smollm2-q8.arq
if [ ! -s "$smollm2" ]; then
  "$host_arq" convert "$gguf" -o "$smollm2" --quant q8 --no-calib
fi
digits=models/pixelcnn/digits17-q8.arq
if [ ! -s "$digits" ]; then
  echo "error: $digits is missing (models/pixelcnn/convert.sh writes it)" >&2
  exit 1
fi
digits_test=models/pixelcnn/digits_test.npy
echo "$smollm2, $digits"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT


# run DIR ARQ... -- ARGS: runs one arq command, stdout to DIR/stdout, stderr to DIR/stderr.
# Returns the command's exit status (never aborts the script).
run() {
  local dir=$1
  shift
  mkdir -p "$dir"
  local rc=0
  "$@" >"$dir/stdout" 2>"$dir/stderr" || rc=$?
  echo "$rc" >"$dir/rc"
  return 0
}

show() { # show LABEL FILE
  echo "---- $1"
  if [ -s "$2" ]; then
    LC_ALL=C cat -v "$2" | head -c 4000
    echo
  else
    echo "(empty)"
  fi
}

# ran_ok LABEL DIR: checks the command in DIR exited 0, else reports and shows stderr.
ran_ok() {
  local rc
  rc=$(cat "$2/rc")
  if [ "$rc" != 0 ]; then
    fail "$1 (exit status $rc)"
    show "stderr" "$2/stderr"
    return 1
  fi
}

# same_text LABEL X86_FILE ARM_FILE
same_text() {
  if [ -s "$2" ] && cmp -s "$2" "$3"; then
    pass "$1"
  else
    fail "$1: outputs differ"
    show "x86" "$2"
    show "aarch64" "$3"
  fi
}

# same_bytes LABEL X86_FILE ARM_FILE (binary outputs: sizes, sha256, first differing bytes)
same_bytes() {
  if [ -s "$2" ] && cmp -s "$2" "$3"; then
    pass "$1 ($(stat -c %s "$2") bytes, sha256 $(sha256sum <"$2" | cut -c1-16))"
  else
    fail "$1: files differ"
    for f in "$2" "$3"; do
      if [ -e "$f" ]; then
        echo "---- $f: $(stat -c %s "$f") bytes, sha256 $(sha256sum <"$f" | cut -c1-64)"
      else
        echo "---- $f: missing"
      fi
    done
    cmp -l "$2" "$3" 2>&1 | head -20 || true
  fi
}

prompt="The capital of France is"
gen_args=(-p "$prompt" -n 12 --temp 0.8 --top-p 0.95 --seed 7 --threads 2)
next_args=(-p "$prompt" --top 3 --json --threads 2)
score_args=("$digits_test" --json --threads 2)

# run_all RUNNER... : every command into $work/<tag>/<command>, with RUNNER prefixed.
run_all() {
  local tag=$1
  shift
  local t0=$SECONDS
  run "$work/$tag/generate" "$@" generate "$smollm2" "${gen_args[@]}"
  run "$work/$tag/next" "$@" next "$smollm2" "${next_args[@]}"
  run "$work/$tag/sample" "$@" sample "$digits" -n 4 --seed 3 --ascii \
    -o "$work/$tag/sample/out.png" --npy "$work/$tag/sample/out.npy"
  run "$work/$tag/score" "$@" score "$digits" "${score_args[@]}"
  echo "$tag: $((SECONDS - t0)) s"
}

echo
echo "== x86 reference run"
run_all x86 "$host_arq"
for c in generate next sample score; do
  if [ "$(cat "$work/x86/$c/rc")" != 0 ]; then
    echo "error: the x86 run of arq $c failed:" >&2
    cat "$work/x86/$c/stderr" >&2
    exit 1
  fi
done
grep -o "kernels: .*" "$work/x86/generate/stderr" | sed 's/^/x86 /'

# check_tier LABEL TAG EXPECTED_TIER
check_tier() {
  local label=$1 tag=$2 tier=$3 x=$work/x86 a=$work/$2
  echo
  echo "== aarch64 under qemu ($label): expecting kernel tier $tier"
  if ran_ok "$label generate" "$a/generate"; then
    local got
    got=$(sed -nE 's/.*kernels: ([a-z0-9]+).*/\1/p' "$a/generate/stderr")
    grep -o "prompt: .*" "$a/generate/stderr" || true
    if [ "$got" = "$tier" ]; then
      pass "$label kernel tier is $tier"
    else
      fail "$label kernel tier: expected $tier, got '${got}'"
      show "stderr" "$a/generate/stderr"
    fi
    same_text "$label generate (seed 7, 12 tokens) equals x86" "$x/generate/stdout" "$a/generate/stdout"
  fi
  if ran_ok "$label next" "$a/next"; then
    same_text "$label next --json equals x86" "$x/next/stdout" "$a/next/stdout"
  fi
  if ran_ok "$label sample" "$a/sample"; then
    same_text "$label sample --ascii (seed 3, 4 images) equals x86" "$x/sample/stdout" "$a/sample/stdout"
    same_bytes "$label sample .npy equals x86" "$x/sample/out.npy" "$a/sample/out.npy"
    same_bytes "$label sample .png equals x86" "$x/sample/out.png" "$a/sample/out.png"
  fi
  if ran_ok "$label score" "$a/score"; then
    same_text "$label score --json (digits_test.npy) equals x86" "$x/score/stdout" "$a/score/stdout"
  fi
}

qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
run_all dotprod "${qemu[@]}" "$arm_arq"
check_tier "default CPU" dotprod dotprod
run_all neon "${qemu[@]}" -cpu cortex-a53 "$arm_arq"
check_tier "-cpu cortex-a53" neon neon

echo
echo "x86 outputs (the reference):"
echo "  generate: $(cat "$work/x86/generate/stdout")"
echo "  next:     $(cat "$work/x86/next/stdout")"
echo "  score:    $(cat "$work/x86/score/stdout")"
echo "aarch64 CLI end to end: $((SECONDS - start)) s in all"
finish_checks
