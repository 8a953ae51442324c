#!/usr/bin/env bash
# The Python package (python/, `import arq`): builds it with maturin into a virtual
# environment of its own (created once, outside the repository; maturin, pytest, numpy
# and matplotlib pip-installed into it), installs it with `pip install ./python`, and
# runs python/tests/ with pytest, which compares it with the arq CLI's --json output
# (ARQ_HOST_BIN, or target/release/arq, built if missing). Prints pytest's count as one
# cargo-style `test result:` line for test-all.sh's closing sum.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

venv="${ARQ_PYTHON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/arq/python-venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# maturin's PEP 517 hooks run the `maturin` executable from PATH.
export PATH="$venv/bin:$PATH"
# Idempotent: pip skips what is installed already.
"$py" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" pytest numpy matplotlib

# The CLI the tests compare against: the one test-all.sh built, else a release build here.
if [ -z "${ARQ_HOST_BIN:-}" ]; then
  cargo build --release -p arq-convert --bin arq
  ARQ_HOST_BIN="${CARGO_TARGET_DIR:-target}/release/arq"
fi
ARQ_HOST_BIN=$(cd "$(dirname "$ARQ_HOST_BIN")" && pwd)/$(basename "$ARQ_HOST_BIN")
export ARQ_HOST_BIN

echo "== building and installing the package (pip install ./python)"
# The extension's own target folder (python/ is outside the cargo workspace, and its
# feature set differs), outside the clone beside the venv: a fresh clone's first run
# compiles the dependencies (about 12 minutes on 2 cores), later runs only the package.
t0=$(date +%s)
target="${ARQ_PYTHON_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/arq/target-python}"
mkdir -p "$target"
CARGO_TARGET_DIR=$(cd "$target" && pwd) \
  "$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./python
echo "built and installed in $(($(date +%s) - t0)) s"

echo "== pytest python/tests"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
# Run from python/tests so `import arq` is the installed package, not the source folder.
(cd python/tests && "$py" -m pytest -q -p no:cacheprovider --junitxml="$report" .) || status=$?
# pytest's counts in cargo's format (test-all.sh sums the `test result:` lines).
"$py" - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
failed = failures + errors
passed = tests - failed - skipped
status = "ok" if failed == 0 else "FAILED"
print(f"test result: {status}. {passed} passed; {failed} failed; {skipped} ignored; 0 measured; 0 filtered out")
PY
exit $status
