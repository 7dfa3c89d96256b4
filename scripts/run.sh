#!/usr/bin/env bash
# The main job: builds micache (with CUDA when nvcc is present) and runs the
# `micache demo` on the best backend available. Extra arguments go to micache.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source scripts/deps.sh
ensure_deps

preset=cpu
extra=()
nvcc=$(find_nvcc)
if [ -n "$nvcc" ]; then
  preset=cuda
  extra=(-DCMAKE_CUDA_COMPILER="$nvcc")
fi
cmake --preset "$preset" "${extra[@]}" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)" --target micache_cli >/dev/null
if (($# == 0)); then set -- demo; fi
exec "build/$preset/examples/micache" "$@"
