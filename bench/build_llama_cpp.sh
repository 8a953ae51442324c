#!/usr/bin/env bash
# Build the peer, llama.cpp, for side-by-side benchmarks against arq.
#
# The llama.cpp source comes from the source distribution of the PyPI package
# llama-cpp-python (pinned below), which vendors it under vendor/llama.cpp.
# Only the CPU tools needed for benchmarking are built (llama-bench,
# llama-quantize, llama-simple), in Release, with GGML_NATIVE=ON (the peer at
# its best on this machine) and without CURL.
#
# Idempotent: the download, the unpack and the build are each skipped when
# their result already exists. Prints the build's bin dir on stdout (last line).
#
# Env:
#   LLAMA_CPP_CACHE   cache dir, outside the repo (default /work/cache/llama.cpp)
#   LLAMA_CPP_PY_VER  llama-cpp-python version (default pinned below)
#   LLAMA_CPP_JOBS    parallel compile jobs (default 2)
#   LLAMA_CPP_CFLAGS  extra C/C++ flags (default: AMX off, see below)
#   LLAMA_CPP_SERVER  1: build llama-server instead (the peer of `arq serve`), in
#                     its own build dir so the benchmark tools' build stays
#
# AMX: with GGML_NATIVE=ON on a CPU that has AMX, ggml compiles its AMX matmul
# path; GCC 12 (Debian 12) miscompiles it: it drops the stores that fill the
# tile config before `ldtilecfg`, so the first `tilezero` dies with SIGILL
# (llama-bench crashes on the first prompt batch). So AMX is switched off by
# default; the rest of -march=native (AVX-512, VNNI, ...) stays. A change of
# flags or options rebuilds from scratch in the same build dir.
set -euo pipefail

ver="${LLAMA_CPP_PY_VER:-0.3.36}"
cache="${LLAMA_CPP_CACHE:-/work/cache/llama.cpp}"
jobs="${LLAMA_CPP_JOBS:-2}"
cflags="${LLAMA_CPP_CFLAGS--mno-amx-tile -mno-amx-int8 -mno-amx-bf16}"
tools=(llama-bench llama-quantize llama-simple llama-perplexity)
server="${LLAMA_CPP_SERVER:-0}"
[ "$server" = 1 ] && tools=(llama-server)

log() { echo "[build_llama_cpp] $*" >&2; }

src="$cache/llama_cpp_python-$ver"
build="$cache/build-$ver"
[ "$server" = 1 ] && build="$cache/build-$ver-server"
bin="$build/bin"

cmake_args=(
  -DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_C_FLAGS=$cflags"
  "-DCMAKE_CXX_FLAGS=$cflags"
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=ON
  -DGGML_OPENMP=ON
  -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF
  -DGGML_CCACHE=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=ON
  -DLLAMA_BUILD_TOOLS=ON
  "-DLLAMA_BUILD_SERVER=$([ "$server" = 1 ] && echo ON || echo OFF)"
)
stamp="$build/arq-build-config.txt"
want_config=$(printf '%s\n' "${cmake_args[@]}")

have_all_bins() {
  local t
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_config" ] || return 1
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if have_all_bins; then
  log "binaries already built in $bin"
  echo "$bin"
  exit 0
fi

# --- build dependencies (apt, only what is missing) --------------------------
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++   >/dev/null 2>&1 || need+=(g++)
command -v make  >/dev/null 2>&1 || need+=(make)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# --- source --------------------------------------------------------------------
mkdir -p "$cache"
sdist="$cache/llama_cpp_python-$ver.tar.gz"
if [ ! -s "$sdist" ]; then
  log "downloading llama-cpp-python==$ver sdist"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  # --no-binary only for this package: with ":all:", pip would also build the
  # sdist's build requirements (ninja, cmake, ...) from source just to read
  # its metadata.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$ver" -d "$tmp" >&2
  mv "$tmp"/llama_cpp_python-"$ver".tar.gz "$sdist.part"
  rm -rf "$tmp"
  mv "$sdist.part" "$sdist"
fi
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  log "unpacking $sdist"
  rm -rf "$src" "$src.part"
  mkdir -p "$src.part"
  tar -xzf "$sdist" -C "$src.part" --strip-components=1
  mv "$src.part" "$src"
fi
lsrc="$src/vendor/llama.cpp"

# --- configure + build -----------------------------------------------------------
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_config" ]; then
  log "configuring in $build (from scratch)"
  rm -rf "$build"
  cmake -S "$lsrc" -B "$build" "${cmake_args[@]}" >&2
  printf '%s\n' "$want_config" > "$stamp"
fi
log "building ${tools[*]} with -j$jobs"
start=$(date +%s)
cmake --build "$build" --config Release -j "$jobs" --target "${tools[@]}" >&2
end=$(date +%s)
log "build took $((end - start)) s"
echo "$((end - start))" > "$build/build_seconds.txt"

have_all_bins || { log "missing binaries in $bin"; exit 1; }
echo "$bin"
