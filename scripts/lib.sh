# Shared by the test scripts (sourced, not run).

# apt_install PKG...: installs the Debian packages that are not installed yet
# (idempotent; sudo when not root).
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "== installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# End-to-end checks: `pass MSG` / `fail MSG` print one line each; `finish_checks` prints
# the count in cargo's format (test-all.sh sums those lines) and fails on any FAIL.
passed=0
failed=0
pass() {
  passed=$((passed + 1))
  echo "e2e: PASS $*"
}
fail() {
  failed=$((failed + 1))
  echo "e2e: FAIL $*"
}
finish_checks() {
  local status=ok
  [ "$failed" -eq 0 ] || status=FAILED
  echo "test result: $status. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out"
  [ "$failed" -eq 0 ]
}
