#!/usr/bin/env bash
# Builds and runs the test suite.
#   scripts/test.sh            CPU-only build, then the CUDA build when nvcc is present
#   scripts/test.sh cpu|cuda|asan|tsan|fma
# Installs missing Debian packages first. CUDA tests skip, saying why, without a GPU.
# asan runs with ASAN_OPTIONS=allocator_may_return_null=1 (CMakePresets.json):
# the out-of-memory test asks for 512 TiB and checks that micache reports
# OutOfMemory; by default ASan would abort on the request itself.
# tsan runs only the concurrency tests (the rest is single-threaded).
# fma builds micache_tests with -mfma and runs the quantiser, compressed-cache
# and conformance tests: their golden hashes and bit-exact comparisons hold
# only because the build passes -ffp-contract=off (CMakeLists.txt). It needs
# an x86-64 CPU with FMA and is skipped, saying so, elsewhere.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source scripts/deps.sh
ensure_deps

presets=("$@")
if ((${#presets[@]} == 0)); then
  presets=(cpu)
  [ -n "$(find_nvcc)" ] && presets+=(cuda)
fi

jobs=$(nproc)
for preset in "${presets[@]}"; do
  echo "== micache tests: $preset =="
  if [ "$preset" = fma ] && ! { [ "$(uname -m)" = x86_64 ] && grep -qw fma /proc/cpuinfo; }; then
    echo "micache: skipping the fma preset: this CPU ($(uname -m)) has no x86-64 FMA to build for"
    continue
  fi
  extra=()
  if [ "$preset" = cuda ]; then
    nvcc=$(find_nvcc)
    [ -n "$nvcc" ] || { echo "micache: the cuda preset needs nvcc (CUDA toolkit)" >&2; exit 1; }
    extra=(-DCMAKE_CUDA_COMPILER="$nvcc")
  fi
  cmake --preset "$preset" "${extra[@]}" -DMICACHE_BUILD_TESTS=ON >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --preset "$preset" -j "$jobs"
done
