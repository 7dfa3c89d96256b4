#!/usr/bin/env bash
# Builds and runs the test suite.
#   scripts/test.sh            CPU-only build, then the CUDA build when nvcc is present
#   scripts/test.sh cpu|cuda|asan|tsan|fma|python
# Installs missing Debian packages first. CUDA tests skip, saying why, without a GPU.
# asan runs with ASAN_OPTIONS=allocator_may_return_null=1 (CMakePresets.json):
# the out-of-memory test asks for 512 TiB and checks that micache reports
# OutOfMemory; by default ASan would abort on the request itself.
# tsan runs only the concurrency tests (the rest is single-threaded).
# fma builds micache_tests with -mfma and runs the quantiser, compressed-cache
# and conformance tests: their golden hashes and bit-exact comparisons hold
# only because the build passes -ffp-contract=off (CMakeLists.txt). It needs
# an x86-64 CPU with FMA and is skipped, saying so, elsewhere.
# python builds the package with `pip install .[test]` (scikit-build-core,
# nanobind, numpy and pytest from PyPI) in a fresh virtual environment,
# build/python-venv, and runs pytest on python/tests: with the CUDA backend
# where nvcc is found (its GPU tests skip without a device), CPU-only
# elsewhere; MICACHE_ENABLE_CUDA=ON|OFF overrides. PyTorch's tests run where the
# machine's python3, or Debian's /usr/bin/python3 with python3-torch, imports
# torch (the venv then sees its site-packages) and skip, saying so, elsewhere.
# MICACHE_INSTALL_TORCH=1 installs python3-torch (PyTorch for the CPU) first.
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

python_tests() {
  [ "${MICACHE_INSTALL_TORCH:-0}" = 0 ] || ensure_torch
  # The interpreter: python3, or Debian's /usr/bin/python3 where only that one
  # imports torch (apt's python3-torch), so that PyTorch's tests run.
  local python=python3 system_packages=() constraints=()
  if ! python3 -c 'import torch' 2>/dev/null && [ -x /usr/bin/python3 ] &&
    /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    python=/usr/bin/python3
  fi
  if "$python" -c 'import torch' 2>/dev/null; then
    system_packages=(--system-site-packages)
    # Keep the numpy ABI torch was built for (a torch built on numpy 1.x
    # cannot convert to or from numpy 2 arrays).
    if "$python" -c 'import sys, numpy; sys.exit(int(numpy.__version__.split(".")[0]) >= 2)' 2>/dev/null; then
      constraints=("numpy<2")
    fi
    echo "micache: PyTorch $("$python" -c 'import torch; print(torch.__version__)') from $python; its tests run"
  else
    echo "micache: PyTorch is not installed for python3; its tests skip"
  fi
  ensure_python_deps "$python"
  local venv="$root/build/python-venv" cuda="${MICACHE_ENABLE_CUDA:-AUTO}"
  # CMake looks for nvcc on PATH; find_nvcc also knows the toolkit's usual place.
  local nvcc
  nvcc=$(find_nvcc)
  [ -z "$nvcc" ] || export CUDACXX="${CUDACXX:-$nvcc}"
  rm -rf "$venv"
  "$python" -m venv "${system_packages[@]}" "$venv"
  echo "micache: pip install .[test] (MICACHE_ENABLE_CUDA=$cuda)"
  # The long option names: Debian's pip 23.0 has no -C.
  "$venv/bin/pip" install --quiet "$root[test]" "${constraints[@]}" \
    --config-settings=cmake.define.MICACHE_ENABLE_CUDA="$cuda" \
    --config-settings=build.tool-args=-j"$jobs"
  (cd "$root" && "$venv/bin/python" -m pytest -p no:cacheprovider -rs python/tests)
}

jobs=$(nproc)
for preset in "${presets[@]}"; do
  echo "== micache tests: $preset =="
  if [ "$preset" = python ]; then
    python_tests
    continue
  fi
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
