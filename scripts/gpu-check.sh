#!/usr/bin/env bash
# Run on a machine with a GPU, over a build made elsewhere with the cuda preset:
#   cmake --preset cuda && cmake --build --preset cuda      (here)
#   scripts/gpu-check.sh [build-dir]                        (there; default build/cuda)
# Prints the device, runs the whole test suite, runs the CUDA tests again under
# compute-sanitizer (memcheck, racecheck, initcheck, synccheck) with plain
# cudaMalloc (pools hide out-of-bounds accesses), then the benchmarks (and
# PyTorch's, when python3 has torch) with the table of micache against its
# peers (scripts/bench_table.py), and writes a report to $OUT (or bench/out)
# as gpu-check.md plus raw logs.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build/cuda}
out=${OUT:-$root/bench/out}
mkdir -p "$out"
report="$out/gpu-check.md"
tests="$build/tests/micache_tests"
cuda_tests="$build/tests/micache_cuda_tests"
bench="$build/bench/micache_bench"
status=0

section() { printf '\n## %s\n\n```\n' "$1" >>"$report"; }
end_section() { printf '```\n' >>"$report"; }

{
  echo "# micache GPU check"
  echo
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
} >"$report"

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee -a "$report"
end_section

section "test suite (pool allocator)"
if "$tests" --gtest_brief=1 >"$out/tests.log" 2>&1 && "$cuda_tests" --gtest_brief=1 >>"$out/tests.log" 2>&1; then
  echo "all tests passed" | tee -a "$report"
else
  echo "FAILURES (see tests.log)" | tee -a "$report"
  status=1
fi
tail -n 5 "$out/tests.log" | tee -a "$report"
end_section

cuda_filter='*cuda*:*CrossBackend*:*Registry*'
for tool in memcheck racecheck initcheck synccheck; do
  section "compute-sanitizer --tool $tool (plain cudaMalloc)"
  extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check full)
  if MICACHE_CUDA_ALLOCATOR=plain compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 9 \
      "$tests" --gtest_filter="$cuda_filter" --gtest_brief=1 >"$out/sanitizer-$tool.log" 2>&1 &&
    MICACHE_CUDA_ALLOCATOR=plain compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 9 \
      "$cuda_tests" --gtest_brief=1 >>"$out/sanitizer-$tool.log" 2>&1; then
    echo "$tool: clean" | tee -a "$report"
  else
    echo "$tool: FAILED (see sanitizer-$tool.log)" | tee -a "$report"
    status=1
  fi
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" "$out/sanitizer-$tool.log" | tail -n 3 | tee -a "$report"
  end_section
done

cli="$build/examples/micache"
if [ -x "$cli" ]; then
  section "micache info, and the demo on cuda:0 against the demo on the CPU"
  "$cli" info 2>&1 | tee -a "$report"
  "$cli" demo --device cuda:0 --data "$root/tests/data" --heatmap "$out/heatmap.png" >"$out/demo-cuda.txt" 2>&1 ||
    status=1
  "$cli" demo --device cpu --data "$root/tests/data" >"$out/demo-cpu.txt" 2>&1
  cat "$out/demo-cuda.txt" >>"$report"
  # Same data, same rules: everything but the device lines and the backend's memory figures must match.
  if diff <(grep -v -e '^micache .* demo on' -e 'backend memory' -e 'heatmap' -e 'colour:' "$out/demo-cpu.txt") \
      <(grep -v -e '^micache .* demo on' -e 'backend memory' -e 'heatmap' -e 'colour:' "$out/demo-cuda.txt") \
      >"$out/demo-diff.txt"; then
    echo "demo: cuda:0 output equals the CPU's" | tee -a "$report"
  else
    echo "demo: cuda:0 output DIFFERS from the CPU's (see demo-diff.txt)" | tee -a "$report"
    status=1
  fi
  end_section
fi

if [ -x "$bench" ]; then
  section "benchmarks"
  "$bench" --benchmark_min_time=0.2 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
    --benchmark_out="$out/bench.json" --benchmark_out_format=json 2>&1 | tee "$out/bench.log" | tee -a "$report"
  end_section
  # PyTorch on the same operations where this host's python has a torch (CUDA when it can), then the
  # table of micache against every peer (scripts/bench_table.py needs only the standard library).
  torch_lines=()
  if python3 -c "import torch" 2>/dev/null; then
    python3 "$root/scripts/bench_torch.py" --min-time 0.2 --repeats 5 >"$out/torch.jsonl" 2>"$out/torch.log" &&
      torch_lines=(--torch "$out/torch.jsonl")
  fi
  section "micache against peers"
  python3 "$root/scripts/bench_table.py" --bench "$out/bench.json" "${torch_lines[@]}" 2>&1 | tee "$out/table.md" |
    tee -a "$report"
  end_section
fi

echo "report: $report"
exit $status
