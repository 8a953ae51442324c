# Shared by the Cortex-M4F firmware test scripts (sourced after scripts/lib.sh, from the
# repository root). Each script builds one firmware/ project, runs it on qemu's
# mps2-an386 board, decodes its defmt log and checks it.

# fw_prepare: Debian's cross toolchain and qemu, and defmt-print (idempotent).
fw_prepare() {
  apt_install rustc-web cargo-web rust-web-src lld qemu-system-arm
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  if ! command -v defmt-print >/dev/null; then
    echo "== installing defmt-print (crates.io, with rustup's cargo)"
    cargo install defmt-print --version 1.2.0 --locked
  fi
}

# fw_build NAME: builds firmware/NAME (release, -Zbuild-std) with Debian's rustc-web into
# $ARQ_FW_TARGET_DIR (default firmware/NAME/target); sets `elf` to the linked ELF.
fw_build() {
  local dir="firmware/$1" target="${ARQ_FW_TARGET_DIR:-$PWD/firmware/$1/target}" t0=$SECONDS
  echo "== building firmware/$1 (Debian's $(/usr/bin/rustc --version), thumbv7em-none-eabihf)"
  (
    cd "$dir"
    DEFMT_LOG=info RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target" \
      /usr/bin/cargo build --release -Zbuild-std=core,panic_abort
  )
  echo "firmware build: $((SECONDS - t0)) s"
  elf="$target/thumbv7em-none-eabihf/release/arq-fw-$1"
}

# fw_host_arq: sets `host_arq` to the arq that test-all.sh's workspace tests just built
# (ARQ_HOST_BIN: a plain `cargo build -p arq-convert` resolves features differently and
# would rebuild its dependencies), or builds one when a script runs alone.
fw_host_arq() {
  if [ -n "${ARQ_HOST_BIN:-}" ] && [ -x "$ARQ_HOST_BIN" ]; then
    host_arq=$ARQ_HOST_BIN
  else
    echo "== building arq for the host"
    cargo build --release -p arq-convert --bin arq
    host_arq="${CARGO_TARGET_DIR:-target}/release/arq"
  fi
  echo "== host arq: $host_arq"
}

# fw_run ELF WORK: runs ELF under qemu with -icount shift=0 (the virtual clock advances
# 1 ns per guest instruction, so the firmware's SysTick readings count instructions; see
# firmware/README.md) for at most $ARQ_QEMU_TIMEOUT seconds (300), decodes the defmt
# log into WORK/log.txt and prints it; sets `qemu_rc`.
fw_run() {
  local elf=$1 work=$2 t0=$SECONDS
  echo "== running $(basename "$elf") under qemu (mps2-an386, Cortex-M4, -icount shift=0)"
  qemu_rc=0
  timeout "${ARQ_QEMU_TIMEOUT:-300}" qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
    -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
    >"$work/defmt.bin" 2>"$work/qemu.stderr" || qemu_rc=$?
  echo "qemu: $((SECONDS - t0)) s (emulated; says nothing about a real Cortex-M4's speed)"
  defmt-print -e "$elf" --log-format '{L} {s}' <"$work/defmt.bin" >"$work/log.txt" 2>"$work/defmt.stderr" || true
  echo "---- firmware log (defmt-print)"
  cat "$work/log.txt"
  echo "----"
}

# fw_check_exit WORK WHAT: the PASS/FAIL line for qemu's exit code.
fw_check_exit() {
  if [ "$qemu_rc" = 0 ]; then
    pass "$2 exits with code 0 under qemu"
  else
    fail "$2 exit code $qemu_rc (1: an error, mismatch, panic or fault; 124: timed out)"
    head -c 4000 "$1/qemu.stderr" "$1/defmt.stderr" || true
  fi
}

# fw_check_arena WORK PINNED: the arena line ("arena: memory plan N bytes, static arena
# M bytes") fits, and the arena is within 3% of PINNED (RAM is the scarce resource on
# the device); sets `arena_static`.
fw_check_arena() {
  local plan=""
  arena_static=0
  read -r plan arena_static < <(sed -nE 's/.*arena: memory plan ([0-9]+) bytes, static arena ([0-9]+) bytes.*/\1 \2/p' "$1/log.txt") || true
  if [ -n "$plan" ] && [ "$plan" -le "$arena_static" ]; then
    pass "arena: memory plan $plan bytes fits the static arena of $arena_static bytes"
  else
    fail "arena: no plan/arena line in the log, or the plan exceeds the arena"
  fi
  if [ "${arena_static:-0}" -gt 0 ] && [ $((arena_static * 100)) -le $(($2 * 103)) ]; then
    pass "arena ${arena_static} bytes is within 3% of the pinned $2"
  else
    fail "arena ${arena_static:-?} bytes grew more than 3% over the pinned $2"
  fi
}

# fw_check_calibration WORK: the instruction counter read its known loop correctly.
fw_check_calibration() {
  local expected="" measured=""
  read -r expected measured < <(sed -nE 's/.*icount: a loop of ([0-9]+) instructions measured ([0-9]+),.*: ok$/\1 \2/p' "$1/log.txt") || true
  if [ -n "$expected" ]; then
    pass "instruction counter: a loop of $expected known instructions measured $measured"
  else
    fail "instruction counter: no passing calibration line (is qemu running with -icount shift=0?)"
  fi
}

# fw_footprint NAME WORK MODEL: the footprint line from the ELF (scripts/elf_footprint.py).
fw_footprint() {
  echo
  echo "== footprint ($elf)"
  local stack_used
  stack_used=$(sed -nE 's/.*stack: ([0-9]+) bytes used.*/\1/p' "$2/log.txt")
  python3 scripts/elf_footprint.py "$1" "$elf" "$(stat -c %s "$3")" "${arena_static:-0}" "${stack_used:-0}"
}
