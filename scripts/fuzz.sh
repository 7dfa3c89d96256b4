#!/usr/bin/env bash
# Builds the libFuzzer targets (the `fuzz` preset: clang++, library under ASan + UBSan), replays the saved
# failing inputs in fuzz/regressions/<target>/, then fuzzes each target for a bounded time on a copy of its seed
# corpus (fuzz/corpus/<target>/, which does not grow). Prints per target the executions, exec/s and final cov/ft.
# Exits non-zero when any replay or run crashes, leaks or times out; failing inputs and full logs are kept under
# build/fuzz/artifacts/<target>/ and build/fuzz/logs/.
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS (default 40) each
#   scripts/fuzz.sh kv_cache ...     the named targets only
# FUZZ_JOBS sets the build's parallelism (default: nproc). Installs missing Debian packages first (apt-get as
# root, or through sudo): micache's own, clang and libclang-rt-14-dev (libFuzzer and the sanitizer runtimes).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source scripts/deps.sh
micache_packages+=(clang libclang-rt-14-dev)
ensure_deps

targets=("$@")
((${#targets[@]})) || targets=(safetensors kv_cache attention_queries compressed paged_kv_cache paged_hybrid)
seconds=${FUZZ_SECONDS:-40}
bin=build/fuzz/fuzz
logs=build/fuzz/logs
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
limits=(-timeout=10 -rss_limit_mb=2048)

start=$SECONDS
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${FUZZ_JOBS:-$(nproc)}" --target "${targets[@]/#/fuzz_}"
echo "== micache fuzz: built in $((SECONDS - start)) s =="

# Scratch space, in memory when /dev/shm is writable; the safetensors target writes its inputs under TMPDIR.
shm=/tmp
[ -w /dev/shm ] && shm=/dev/shm
work=$(mktemp -d "$shm/micache-fuzz-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp"
export TMPDIR=$work/tmp
mkdir -p "$logs"
failed=()

# Each saved input runs once; every one must pass.
for target in "${targets[@]}"; do
  for input in fuzz/regressions/"$target"/*; do
    [ -f "$input" ] || continue
    if "$bin/fuzz_$target" "${limits[@]}" "$input" >"$work/replay.log" 2>&1; then
      echo "replay $input: ok"
    else
      echo "replay $input: FAILED"
      grep -E 'micache fuzz:|ERROR:|SUMMARY:|runtime error' "$work/replay.log" | head -n 5 | sed 's/^/  /'
      failed+=("replay $input")
    fi
  done
done

printf '%-18s %10s %8s %7s %7s  %s\n' target executions exec/s cov ft result
for target in "${targets[@]}"; do
  corpus=$work/corpus-$target
  artifacts=build/fuzz/artifacts/$target
  log=$logs/$target.log
  mkdir -p "$corpus" "$artifacts"
  [ -d "fuzz/corpus/$target" ] && cp -r "fuzz/corpus/$target/." "$corpus/"
  dict=()
  [ -f "fuzz/$target.dict" ] && dict=(-dict="fuzz/$target.dict")
  status=0
  "$bin/fuzz_$target" "${dict[@]}" "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  result=ok
  if ((status != 0)); then
    result="FAILED (exit $status): $(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)"
    failed+=("fuzz_$target")
  fi
  printf '%-18s %10s %8s %7s %7s  %s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
  if ((status != 0)); then
    grep -E 'micache fuzz:|ERROR:|SUMMARY:|runtime error' "$log" | head -n 5 | sed 's/^/  /'
  fi
done
echo "== micache fuzz: $((SECONDS - start)) s in all; logs in $logs =="
if ((${#failed[@]})); then
  echo "micache fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
