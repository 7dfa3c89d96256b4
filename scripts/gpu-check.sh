#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2016  # phases run as "phase_$p"; markdown fences in printf formats
# One GPU run that fits the device lease: as much truth as 8 minutes can give.
#
#   scripts/gpu-payload.sh                       (here: builds the cuda preset, assembles build/gpu-payload)
#   scripts/gpu-check.sh [payload-dir]           (there, from the repository root; default build/gpu-payload)
#
# The payload folder holds the binaries (tests/, bench/, examples/ and the libraries beside them);
# the git tree brings this script, scripts/bench_*.py, tests/data and README.md. A build
# directory of the cuda preset (build/cuda) has the same layout and works too.
#
# Phases, in order; each runs under its own cap (seconds) and, as soon as it ends, appends one
# line to $OUT/summary.txt: VERDICT (PASS, FAIL, SKIP or TIMEOUT), phase, seconds taken / cap,
# a few words. A run cut short still returns every line it reached (and progress.txt names the
# phase it was in). $OUT/summary.md, written at the end, gathers the lines, the failing tests,
# the sanitizer summaries and the benchmark table.
#
#   #  phase        cap  what                                                           log
#   1  device        20  nvidia-smi; `micache info` (CUDA usable?); ldd of the payload  device.log
#   2  conformance   45  micache_tests --gtest_filter=BackendConformance* (every        conformance.log
#                        backend against CpuBackend at the seam)
#   3  suite         60  micache_tests, every case but the conformance suite (the       suite.log
#                        cuda0 instantiations and the CPU ones, ~4 s), then the whole
#                        micache_cuda_tests
#   4  memcheck      90  compute-sanitizer memcheck --leak-check full over               memcheck.log
#                        micache_cuda_tests, the conformance cases on CUDA and the
#                        cuda0 cache tests (Backends/*, Devices/*, CrossBackend)
#   5  racecheck     45  racecheck: micache_cuda_tests + conformance cases on CUDA      racecheck.log
#   6  initcheck     45  initcheck: micache_cuda_tests, conformance cases on CUDA and   initcheck.log
#                        the cuda0 cache tests (Backends/*)
#   7  synccheck     30  synccheck: micache_cuda_tests + conformance cases on CUDA      synccheck.log
#   8  demo          20  `micache demo` on cuda:0 diffed against the demo on the CPU    demo-*.txt
#   9  bench         80  micache_bench, CUDA cases, --benchmark_min_time=0.05 (1.7.1    bench.log/json
#                        takes plain seconds), 3 repetitions; scripts/bench_table.py    table.md
#  10  torch         35  scripts/bench_torch.py --device cuda (PyTorch peers), joined   torch.jsonl
#                        into table.md                                                  table.md
#                   ---
#                   470  caps in all: call the device tool with timeout_s 540 (README, "On a GPU")
#  11  python       300  only when GPU_CHECK_PHASES names it (a second call): the Python     python.log
#                        package built there with CUDA (pip install --no-build-isolation
#                        with the host's scikit-build-core and nanobind, sm_90), then
#                        pytest python/tests under the python3 that has torch (the CUDA
#                        cases of test_torch.py: zero copy on the device, the consumer's
#                        stream)
#
# Sanitizer runs use MICACHE_CUDA_ALLOCATOR=plain (cudaMalloc: pools hide out-of-bounds accesses)
# and leave out the concurrency tests (threads under a sanitizer: a stall there would take the
# rest of the phase) and the test that reserves more than the device's memory (the sanitizer
# would report the out-of-memory API error that is the point of the test).
# A phase that times out says how many tests (or benchmarks) it finished and the last it started.
#
# Without a GPU (no nvidia-smi, or it lists none) every phase is a SKIP naming the reason, and the
# script exits 0 in about a second. Otherwise it exits 1 when any phase FAILs or TIMEs OUT, after
# running every phase. Environment: OUT (default bench/out), GPU_CHECK_PHASES (a subset, e.g.
# "memcheck racecheck", for a second call), GPU_CHECK_CAP_<phase> (another cap), GPU_CHECK_FORCE=1
# (run the phases even without a GPU: tests the script itself).
set -uo pipefail # no -e: a failing phase must not stop the next one

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
payload=${1:-$root/build/gpu-payload}
case $payload in
  /*) ;;
  *) payload=$PWD/$payload ;; # relative to where the script was called from
esac
cd "$root" || exit 2
out=${OUT:-$root/bench/out}
mkdir -p "$out"
[ -d /usr/local/cuda/bin ] && PATH=$PATH:/usr/local/cuda/bin

tests=$payload/tests/micache_tests
cuda_tests=$payload/tests/micache_cuda_tests
bench=$payload/bench/micache_bench
cli=$payload/examples/micache

# Tests find the git tree's data and README wherever the tree lies (tests/file_support.hpp).
export MICACHE_TEST_DATA_DIR=$root/tests/data
export MICACHE_SOURCE_DIR=$root

DEFAULT_PHASES=(device conformance suite memcheck racecheck initcheck synccheck demo bench torch)
PHASES=("${DEFAULT_PHASES[@]}" python)
declare -A CAP=([device]=20 [conformance]=45 [suite]=60 [memcheck]=90 [racecheck]=45 [initcheck]=45
  [synccheck]=30 [demo]=20 [bench]=80 [torch]=35 [python]=300)
for p in "${PHASES[@]}"; do
  var=GPU_CHECK_CAP_$p
  CAP[$p]=${!var:-${CAP[$p]}}
done
selected=" ${GPU_CHECK_PHASES:-${DEFAULT_PHASES[*]}} "

# gtest filters (a '-' starts the negative patterns). Conformance suites may carry an
# instantiation prefix (Backends/BackendConformance...), so both forms are matched.
conformance='BackendConformance*:*/BackendConformance*'
conformance_cuda='*BackendConformance*cuda*:*BackendConformance*Cuda*:*BackendConformance*CUDA*'
caches_cuda='Backends/*cuda0:Devices/*cuda0:RandomPatterns/CrossBackend.*:Estimators/CompressedCrossBackend.*'
sanitizer_exclude='*Concurrency*:*ReservingBeyondTheDevicesMemory*'
declare -A SANITIZER_FILTER=(
  [memcheck]="$conformance_cuda:$caches_cuda-$sanitizer_exclude"
  [racecheck]="$conformance_cuda-$sanitizer_exclude"
  [initcheck]="$conformance_cuda:Backends/*cuda0-$sanitizer_exclude"
  [synccheck]="$conformance_cuda-$sanitizer_exclude")

summary=$out/summary.txt
progress=$out/progress.txt
status=0
declare -A VERDICT NOTE TOOK

# Is there a GPU? Sets gpu_reason when not.
gpu_reason=
if ! command -v nvidia-smi >/dev/null 2>&1; then
  gpu_reason="no GPU: nvidia-smi not found"
elif ! timeout 15 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  gpu_reason="no GPU: nvidia-smi lists none ($(timeout 15 nvidia-smi -L 2>&1 | head -n1 | cut -c1-80))"
fi
if [ -n "$gpu_reason" ] && [ "${GPU_CHECK_FORCE:-0}" = 1 ]; then
  echo "GPU_CHECK_FORCE=1: running the phases although there is $gpu_reason"
  gpu_reason=
fi

# capped LOG CMD...: runs CMD with its output appended to LOG, killed at the phase's deadline.
# Returns CMD's status, 124 (or 137) when it ran out of time, 124 when no time was left to start it.
capped() {
  local log=$1 left
  shift
  left=$((phase_end - SECONDS))
  if ((left <= 0)); then
    echo "(not started, the phase's cap is spent: $*)" >>"$log"
    return 124
  fi
  echo "\$ $* (within ${left}s)" >>"$log"
  timeout -k 5 "$left" "$@" >>"$log" 2>&1
}

timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }

# gtest_note LOG: "P passed (C on CUDA), F failed, S skipped" summed over the gtest runs in LOG;
# for a cut run, how many finished and which started last.
gtest_note() {
  awk '
    /^\[==========\] Running/ { open = 1; run_ok = 0; run_failed = 0; run_skipped = 0 }
    /^\[ RUN      \]/ { last = $4 }
    /^\[       OK \]/ { run_ok++; if ($0 ~ /[Cc][Uu][Dd][Aa][0-9]/) cuda++ }
    /^\[  FAILED  \] [^0-9].*\([0-9]+ ms\)$/ { run_failed++ }
    /^\[  SKIPPED \] [^0-9].*\([0-9]+ ms\)$/ { run_skipped++ }
    /^\[  PASSED  \] [0-9]+ test/ { passed += $4; open = 0 }
    /^\[  FAILED  \] [0-9]+ test/ { failed += $4 }
    /^\[  SKIPPED \] [0-9]+ test/ { skipped += $4 }
    END {
      if (open) { passed += run_ok; failed += run_failed; skipped += run_skipped }
      printf "%d passed (%d on cuda0), %d failed, %d skipped", passed, cuda, failed, skipped
      if (open) printf "; cut in %s", last
    }' "$1"
}

# cuda_cases LOG: how many cases whose name says cuda passed in LOG.
cuda_cases() { awk '/^\[       OK \]/ && $0 ~ /[Cc][Uu][Dd][Aa][0-9]/ { n++ } END { print n + 0 }' "$1"; }
# tests_run LOG: how many cases started in LOG.
tests_run() { grep -c '^\[ RUN      \]' "$1"; }

need() { # need FILE...: FAILs the phase (returns 1) when the payload lacks one
  local f
  for f in "$@"; do
    [ -f "$f" ] && [ ! -x "$f" ] && chmod u+x "$f" # in case the carry lost the mode
    if [ ! -x "$f" ]; then
      verdict=FAIL
      note="payload lacks ${f#"$payload"/} (scripts/gpu-payload.sh builds it)"
      return 1
    fi
  done
}

# ---------------------------------------------------------------------------------------- phases
# Each sets verdict (PASS/FAIL/SKIP/TIMEOUT) and note; its log is $out/<phase>.log.

phase_device() {
  local log=$out/device.log rc f missing=() gpu driver
  capped "$log" timeout 10 nvidia-smi \
    --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,compute_mode,mig.mode.current \
    --format=csv
  capped "$log" timeout 10 nvidia-smi
  gpu=$(timeout 10 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n1)
  driver=$(timeout 10 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
  {
    echo "host: $(nproc) cores, $(free -g 2>/dev/null | awk '/^Mem:/ { print $2 " GiB" }') memory"
    command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -n1
    [ -f "$payload/MANIFEST.txt" ] && head -n 4 "$payload/MANIFEST.txt"
  } >>"$log" 2>&1
  need "$cli" "$tests" || return
  for f in "$cli" "$tests" "$cuda_tests" "$bench" "$payload"/lib*.so* "$payload"/bench/lib*.so*; do
    [ -e "$f" ] || continue
    echo "\$ ldd ${f#"$payload"/}" >>"$log"
    env -u LD_LIBRARY_PATH ldd "$f" >>"$log" 2>&1
    env -u LD_LIBRARY_PATH ldd "$f" 2>&1 | grep -q 'not found' && missing+=("${f#"$payload"/}")
  done
  capped "$log" "$cli" info
  rc=$?
  if ((${#missing[@]})); then
    verdict=FAIL note="libraries not found for: ${missing[*]} (see device.log)"
  elif ((rc != 0)); then
    verdict=FAIL note="micache info exits $rc"
  elif ! grep -q '^CUDA usable: yes' "$log"; then
    verdict=FAIL note="micache: $(grep -m1 '^CUDA usable' "$log" | cut -c1-120)"
  else
    verdict=PASS note="${gpu:-unknown GPU}, driver ${driver:-?}; micache sees CUDA"
  fi
}

phase_conformance() {
  local log=$out/conformance.log rc
  need "$tests" || return
  capped "$log" "$tests" --gtest_filter="$conformance"
  rc=$?
  note=$(gtest_note "$log")
  if timed_out "$rc"; then
    verdict=TIMEOUT
  elif ((rc != 0)); then
    verdict=FAIL
  elif (($(tests_run "$log") == 0)); then
    verdict=FAIL note="no BackendConformance case in micache_tests"
  elif (($(cuda_cases "$log") == 0)); then
    verdict=FAIL note="$note: no conformance case ran on CUDA"
  else
    verdict=PASS
  fi
}

phase_suite() {
  local log=$out/suite.log rc1 rc2
  need "$tests" "$cuda_tests" || return
  capped "$log" "$tests" --gtest_filter="-$conformance"
  rc1=$?
  capped "$log" "$cuda_tests"
  rc2=$?
  note=$(gtest_note "$log")
  if timed_out "$rc1" || timed_out "$rc2"; then
    verdict=TIMEOUT
  elif ((rc1 != 0 || rc2 != 0)); then
    verdict=FAIL
  elif (($(cuda_cases "$log") == 0)); then
    verdict=FAIL note="$note: no cuda0 case ran"
  else
    verdict=PASS
  fi
}

sanitizer_phase() {
  local tool=$1 log=$out/$1.log rc1 rc2 extra=() errors
  need "$tests" "$cuda_tests" || return
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    verdict=SKIP note="compute-sanitizer not found"
    return
  fi
  [ "$tool" = memcheck ] && extra=(--leak-check full)
  # micache_cuda_tests first: small, and the one a cut run must not miss. The
  # CudaErrors tests make CUDA API calls fail on purpose, which the sanitizer
  # would report: they run in the suite phase instead.
  capped "$log" env MICACHE_CUDA_ALLOCATOR=plain compute-sanitizer --tool "$tool" "${extra[@]}" \
    --error-exitcode 9 "$cuda_tests" --gtest_filter='-CudaErrors.*'
  rc1=$?
  capped "$log" env MICACHE_CUDA_ALLOCATOR=plain compute-sanitizer --tool "$tool" "${extra[@]}" \
    --error-exitcode 9 "$tests" --gtest_filter="${SANITIZER_FILTER[$tool]}"
  rc2=$?
  errors=$(awk '/ERROR SUMMARY: [0-9]+ error/ { for (i = 1; i <= NF; i++) if ($i == "SUMMARY:") n += $(i + 1) }
    /RACECHECK SUMMARY: [0-9]+ hazard/ { for (i = 1; i <= NF; i++) if ($i == "SUMMARY:") h += $(i + 1) }
    END { printf "%d sanitizer errors%s", n, (h ? ", " h " races" : "") }' "$log")
  note="$errors; $(gtest_note "$log")"
  if timed_out "$rc1" || timed_out "$rc2"; then
    verdict=TIMEOUT
  elif ((rc1 != 0 || rc2 != 0)); then
    verdict=FAIL
    ((rc1 == 9 || rc2 == 9)) && note="sanitizer reports errors: $note"
  else
    verdict=PASS
  fi
}
phase_memcheck() { sanitizer_phase memcheck; }
phase_racecheck() { sanitizer_phase racecheck; }
phase_initcheck() { sanitizer_phase initcheck; }
phase_synccheck() { sanitizer_phase synccheck; }

phase_demo() {
  local rc1 rc2 ignore=(-e '^\$ ' -e '^micache .* demo on' -e 'backend memory' -e 'heatmap' -e 'colour:')
  need "$cli" || return
  rm -f "$out"/demo-{cuda,cpu,diff}.txt "$out/heatmap.png"
  capped "$out/demo-cuda.txt" "$cli" demo --device cuda:0 --data "$root/tests/data" --heatmap "$out/heatmap.png"
  rc1=$?
  capped "$out/demo-cpu.txt" "$cli" demo --device cpu --data "$root/tests/data"
  rc2=$?
  # Same data, same rules: everything but the device lines and the backend's memory figures must match.
  diff <(grep -v "${ignore[@]}" "$out/demo-cpu.txt") <(grep -v "${ignore[@]}" "$out/demo-cuda.txt") >"$out/demo-diff.txt"
  local differs=$?
  if timed_out "$rc1" || timed_out "$rc2"; then
    verdict=TIMEOUT note="demo did not finish"
  elif ((rc1 != 0)); then
    verdict=FAIL note="demo on cuda:0 exits $rc1: $(tail -n1 "$out/demo-cuda.txt" | cut -c1-100)"
  elif ((rc2 != 0)); then
    verdict=FAIL note="demo on the CPU exits $rc2"
  elif ((differs != 0)); then
    verdict=FAIL note="cuda:0 output differs from the CPU's in $(grep -c '^[<>]' "$out/demo-diff.txt") lines (demo-diff.txt)"
  else
    verdict=PASS note="cuda:0 output equals the CPU's ($(wc -l <"$out/demo-cuda.txt") lines)"
  fi
}

# close_json FILE: a run cut short leaves Google Benchmark's JSON open; keep its complete runs.
close_json() {
  python3 - "$1" <<'EOF'
import json, sys
path = sys.argv[1]
text = open(path).read()
try:
    json.loads(text)
except ValueError:
    end = text.rfind("\n    }")
    if end < 0:
        sys.exit(1)
    open(path, "w").write(text[:end] + "\n    }\n  ]\n}\n")
EOF
}

phase_bench() {
  local log=$out/bench.log rc runs errors
  need "$bench" || return
  rm -f "$out/bench.json" "$out/table.md"
  capped "$log" "$bench" --benchmark_filter=/cuda --benchmark_min_time=0.05 --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=true --benchmark_out="$out/bench.json" --benchmark_out_format=json
  rc=$?
  runs=$(grep -c '_median ' "$log")
  errors=$(grep -c 'ERROR OCCURRED' "$log")
  if [ -s "$out/bench.json" ] && close_json "$out/bench.json" &&
    python3 scripts/bench_table.py --bench "$out/bench.json" >"$out/table.md" 2>>"$log"; then
    note="$runs benchmarks, $errors errors; table.md"
  else
    note="$runs benchmarks, $errors errors; no table"
    ((rc == 0)) && rc=1
  fi
  if timed_out "$rc"; then
    verdict=TIMEOUT note="$note (cut; last: $(grep -o '^[a-z_]*/[^ ]*' "$log" | tail -n1))"
  elif ((rc != 0 || errors != 0)); then
    verdict=FAIL
  elif ((runs == 0)); then
    verdict=FAIL note="no CUDA benchmark ran"
  else
    verdict=PASS
  fi
}

phase_torch() {
  local log=$out/torch.log rc py='' lines candidate candidates=()
  command -v python3 >/dev/null && candidates+=(python3)
  [ -x /usr/bin/python3 ] && [ "$(command -v python3)" != /usr/bin/python3 ] && candidates+=(/usr/bin/python3)
  for candidate in "${candidates[@]}"; do
    if capped "$log" "$candidate" -c 'import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'; then
      py=$candidate
      break
    fi
  done
  if [ -z "$py" ]; then
    verdict=SKIP note="no python3 with torch"
    return
  fi
  if ! grep -q 'available True' "$log"; then
    verdict=FAIL note="$(grep -m1 -o '^torch .*' "$log"): torch sees no CUDA device"
    return
  fi
  rm -f "$out/torch.jsonl"
  capped "$out/torch.jsonl" "$py" scripts/bench_torch.py --device cuda --min-time 0.05 --repeats 3
  rc=$?
  lines=$(grep -c '^{' "$out/torch.jsonl")
  grep -v '^{' "$out/torch.jsonl" >>"$log"
  if [ -s "$out/bench.json" ] && python3 scripts/bench_table.py --bench "$out/bench.json" \
    --torch "$out/torch.jsonl" >"$out/table.md" 2>>"$log"; then
    note="$lines PyTorch measurements, joined into table.md"
  else
    note="$lines PyTorch measurements (no micache bench.json to join)"
  fi
  if timed_out "$rc"; then
    verdict=TIMEOUT
  elif ((rc != 0)); then
    verdict=FAIL note="bench_torch.py exits $rc; $note"
  else
    verdict=PASS
  fi
}

phase_python() {
  local log=$out/python.log rc site=/tmp/micache-python summary_line
  capped "$log" python3 -c 'import sys, torch, nanobind, scikit_build_core
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "nanobind", nanobind.__version__, "scikit-build-core", scikit_build_core.__version__)' || {
    verdict=SKIP note="python3 lacks torch, nanobind or scikit-build-core"
    return
  }
  rm -rf "$site"
  capped "$log" python3 -m pip install --no-build-isolation --no-deps --no-cache-dir --target "$site" \
    --config-settings=cmake.define.MICACHE_ENABLE_CUDA=ON --config-settings=build.tool-args=-j"$(nproc)" \
    --config-settings=build-dir=/tmp/micache-python-build .
  rc=$?
  if ((rc != 0)); then
    verdict=$(timed_out "$rc" && echo TIMEOUT || echo FAIL) note="pip install exits $rc"
    return
  fi
  PYTHONPATH=$site capped "$log" python3 -m pytest -p no:cacheprovider -rs -q python/tests
  rc=$?
  summary_line=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$log" | tail -n1 | tr -d '=')
  note="${summary_line:-no pytest summary}"
  if timed_out "$rc"; then
    verdict=TIMEOUT
  elif ((rc != 0)); then
    verdict=FAIL
  else
    verdict=PASS
  fi
}

# ------------------------------------------------------------------------------------------ run
commit=$(head -n 2 "$payload/MANIFEST.txt" 2>/dev/null | sed -n 's/^commit: //p')
{
  echo "micache gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ), payload ${payload#"$root"/}${commit:+ (commit $commit)}"
} >"$summary"
: >"$progress"
cat "$summary"
start_all=$SECONDS
for p in "${PHASES[@]}"; do
  phase_start=$SECONDS
  phase_end=$((SECONDS + CAP[$p]))
  verdict=FAIL note="phase ended without a verdict"
  if [[ $selected != *" $p "* ]]; then
    verdict=SKIP note="not in GPU_CHECK_PHASES"
  elif [ -n "$gpu_reason" ]; then
    verdict=SKIP note=$gpu_reason
  else
    echo "$(date -u +%H:%M:%S) start $p (cap ${CAP[$p]}s)" >>"$progress"
    rm -f "$out/$p.log"
    "phase_$p"
  fi
  TOOK[$p]=$((SECONDS - phase_start))
  VERDICT[$p]=$verdict
  NOTE[$p]=$note
  line=$(printf '%-7s %-11s %3ds/%3ds  %s' "$verdict" "$p" "${TOOK[$p]}" "${CAP[$p]}" "$note")
  echo "$line" >>"$summary"
  echo "$line"
  case $verdict in FAIL | TIMEOUT) status=1 ;; esac
done

# ------------------------------------------------------------------------------------- summary.md
{
  echo "# micache GPU check"
  echo
  head -n1 "$summary"
  echo
  echo "| # | phase | cap s | verdict | took s | note |"
  echo "|---|---|---|---|---|---|"
  i=0
  for p in "${PHASES[@]}"; do
    i=$((i + 1))
    echo "| $i | $p | ${CAP[$p]} | ${VERDICT[$p]} | ${TOOK[$p]} | ${NOTE[$p]//|/\\|} |"
  done
  echo
  echo "total: $((SECONDS - start_all)) s; exit status $status"
  ran() { [ "${VERDICT[$1]}" != SKIP ]; }
  test_logs=() sanitizer_logs=()
  for p in conformance suite memcheck racecheck initcheck synccheck; do
    ran "$p" && [ -f "$out/$p.log" ] && test_logs+=("$out/$p.log")
  done
  for p in memcheck racecheck initcheck synccheck; do
    ran "$p" && [ -f "$out/$p.log" ] && sanitizer_logs+=("$out/$p.log")
  done
  failed=$(cat "${test_logs[@]}" /dev/null | grep -E '^\[  FAILED  \] [^0-9]' | sed 's/ (.*//' | sort -u)
  if [ -n "$failed" ]; then
    printf '\n## Failing tests\n\n```\n%s\n```\n' "$failed"
  fi
  sanitizer=$(grep -H -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "${sanitizer_logs[@]}" /dev/null |
    sed "s|^$out/||")
  if [ -n "$sanitizer" ]; then
    printf '\n## Sanitizer summaries\n\n```\n%s\n```\n' "$sanitizer"
  fi
  if ran demo && [ -s "$out/demo-diff.txt" ]; then
    printf '\n## Demo: CPU (<) against cuda:0 (>)\n\n```\n%s\n```\n' "$(head -n 40 "$out/demo-diff.txt")"
  fi
  if { ran bench || ran torch; } && [ -s "$out/table.md" ]; then
    printf '\n## micache against its peers\n\n'
    cat "$out/table.md"
  fi
  printf '\n## Files in $OUT\n\n'
  (cd "$out" && find . -type f | sed 's|^\./||' | sort | sed 's/^/- /')
} >"$out/summary.md"
echo "summary: $out/summary.md"
exit $status
