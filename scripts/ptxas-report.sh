#!/usr/bin/env bash
# Registers, spills and static shared memory of every micache kernel, from
# ptxas -v, one line per kernel (demangled):
#   scripts/ptxas-report.sh [source-root] [arch]     (default: this tree, sm_90)
# Needs nvcc (no GPU). Compiles each cuda/*.cu once with the library's flags.
set -euo pipefail
root=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
arch=${2:-90}
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
nvcc=$(find_nvcc)
[ -n "$nvcc" ] || { echo "ptxas-report: needs nvcc" >&2; exit 1; }
config=$(mktemp -d)
trap 'rm -rf "$config"' EXIT
mkdir -p "$config/micache"
printf '#pragma once\n#define MICACHE_HAS_CUDA 1\n' >"$config/micache/config.hpp"
for source in "$root"/cuda/*.cu; do
  "$nvcc" -std=c++17 -O3 -arch=sm_"$arch" --expt-relaxed-constexpr -I"$root" -I"$root/include" -I"$config" \
    -Xptxas -v -c "$source" -o /dev/null 2>&1 |
    awk -v file="$(basename "$source")" '
      /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name = substr($0, RSTART + 1, RLENGTH - 2) }
      /bytes stack frame/ { frame = $1; spill_st = $5; spill_ld = $9 }
      /Used [0-9]+ registers/ {
        match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
        smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
        printf "%s\t%s\tregs=%s\tstack=%s\tspill_stores=%s\tspill_loads=%s\tsmem=%s\n", file, name, regs, frame, spill_st, spill_ld, smem
      }'
done | while IFS=$'\t' read -r file name rest; do
  printf '%s\t%s\t%s\n' "$file" "$(echo "$name" | c++filt | sed -E 's/\(anonymous namespace\):://g; s/^void //; s/\(.*//')" "$rest"
done
