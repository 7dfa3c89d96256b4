#!/usr/bin/env bash
# Benchmarks against peers in one run: builds micache_bench with a preset
# (default cpu), runs it with JSON output (micache and its in-process
# baselines: candle-mi's way, std::partial_sort, CUB and the copy roof on
# CUDA), runs scripts/bench_torch.py (PyTorch on the same operations and
# sizes, with Debian's /usr/bin/python3 and python3-torch, installed with
# apt-get when missing) and prints the joined markdown table.
#
#   scripts/bench-peers.sh [preset] [extra micache_bench arguments]
#
# Environment: BUILD_DIR (default build/<preset>), JOBS (build jobs, default
# nproc), OUT (where bench.json, torch.jsonl and table.md go; default
# $BUILD_DIR/peers), BENCH_MIN_TIME (default 0.2 s), BENCH_REPETITIONS
# (default 3), TORCH_DEVICE (cpu, cuda or all; default: cpu for the cpu
# preset, all otherwise). Extra arguments (e.g. --benchmark_filter=...) go to
# micache_bench.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source scripts/deps.sh
ensure_deps

preset=cpu
if (($# > 0)) && [[ $1 != -* ]]; then
  preset=$1
  shift
fi
build=${BUILD_DIR:-$root/build/$preset}
out=${OUT:-$build/peers}
min_time=${BENCH_MIN_TIME:-0.2}
repetitions=${BENCH_REPETITIONS:-3}
torch_device=${TORCH_DEVICE:-all}
extra=()
if [ "$preset" = cpu ]; then
  torch_device=${TORCH_DEVICE:-cpu}
elif [ "$preset" = cuda ]; then
  nvcc=$(find_nvcc)
  [ -n "$nvcc" ] && extra=(-DCMAKE_CUDA_COMPILER="$nvcc")
fi

if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "micache: installing python3-torch"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch
fi

cmake --preset "$preset" -B "$build" "${extra[@]}" >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target micache_bench >/dev/null
mkdir -p "$out"

echo "micache_bench: $build/bench/micache_bench" >&2
"$build/bench/micache_bench" --benchmark_min_time="$min_time" --benchmark_repetitions="$repetitions" \
  --benchmark_report_aggregates_only=true --benchmark_out="$out/bench.json" --benchmark_out_format=json "$@" >&2
echo "PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), device $torch_device" >&2
/usr/bin/python3 scripts/bench_torch.py --device "$torch_device" --min-time "$min_time" \
  --repeats "$repetitions" >"$out/torch.jsonl"
/usr/bin/python3 scripts/bench_table.py --bench "$out/bench.json" --torch "$out/torch.jsonl" | tee "$out/table.md"
