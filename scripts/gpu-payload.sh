#!/usr/bin/env bash
# Builds the cuda preset and assembles build/gpu-payload/: the one folder a GPU
# host needs besides the git tree (which brings scripts/, tests/data and
# README.md), carried there by the device tool and run by scripts/gpu-check.sh.
#
#   scripts/gpu-payload.sh [--no-build]
#
# Layout (the build tree's, so its $ORIGIN-relative RUNPATHs hold unchanged):
#
#   libmicache.so.0               the library, under its soname (real file, no symlinks)
#   libcudart.so.13               the CUDA runtime the build linked (the host's driver is enough)
#   tests/micache_tests           RUNPATH $ORIGIN/../
#   tests/micache_cuda_tests      RUNPATH $ORIGIN/../
#   bench/micache_bench           RUNPATH $ORIGIN:$ORIGIN/..
#   bench/libbenchmark.so.1debian Debian's Google Benchmark 1.7.1, under its soname
#   examples/micache              the CLI (info, demo), RUNPATH $ORIGIN/../
#   MANIFEST.txt                  commit, build date, every file with size and sha256
#
# Everything is stripped (--strip-unneeded keeps the dynamic symbols, so
# compute-sanitizer backtraces still name libmicache's functions).
# libmicache's build RUNPATH has no $ORIGIN (only the toolkit's lib folder), so
# it is rewritten to $ORIGIN (cmake -P file(RPATH_CHANGE), no patchelf needed),
# which lets it find the libcudart beside it. Then every ELF file is checked
# with readelf -d and ldd, from a copy of the folder in a scratch directory: each
# library resolves inside the folder, except the base system's (libc, libm,
# libstdc++, libgcc_s, libz, the loader), which the host has. The folder must stay
# under 40 MiB (the device tool carries 64 MiB with the git tree).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=$root/build/cuda
payload=$root/build/gpu-payload
limit_mib=40

if [ "${1:-}" != --no-build ]; then
  # One heavy build at a time on this machine (other sessions build too).
  flock /tmp/micache-build.lock bash -c \
    'cmake --preset cuda >/dev/null && cmake --build --preset cuda -j2 --target micache_tests micache_cuda_tests micache_bench micache_cli'
fi

# The CUDA runtime the build links, as its binaries load it here.
cudart=$(env -u LD_LIBRARY_PATH ldd "$build/tests/micache_cuda_tests" | awk '$1 == "libcudart.so.13" { print $3 }')
cudart=$(readlink -f "$cudart")

rm -rf "$payload"
mkdir -p "$payload/tests" "$payload/bench" "$payload/examples"
cp -L "$build/libmicache.so.0" "$payload/libmicache.so.0"
cp -L "$cudart" "$payload/libcudart.so.13"
cp -L "$build/tests/micache_tests" "$build/tests/micache_cuda_tests" "$payload/tests/"
cp -L "$build/bench/micache_bench" "$payload/bench/"
benchlib=$(readelf -d "$build/bench/micache_bench" | sed -n 's/.*Shared library: \[\(libbenchmark[^]]*\)\].*/\1/p')
cp -L "$build/bench/$benchlib" "$payload/bench/"
cp -L "$build/examples/micache" "$payload/examples/"

elves=(libmicache.so.0 libcudart.so.13 tests/micache_tests tests/micache_cuda_tests bench/micache_bench
  "bench/$benchlib" examples/micache)
for f in "${elves[@]}"; do
  chmod u+w "$payload/$f"
  strip --strip-unneeded "$payload/$f"
done

# libmicache: RUNPATH $ORIGIN (the build's has no $ORIGIN; file(RPATH_CHANGE) rewrites in place, so
# the new path must not be longer than the old one).
old_rpath=$(readelf -d "$payload/libmicache.so.0" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p')
if [ "$old_rpath" != "\$ORIGIN" ]; then
  cat >"$payload/.rpath.cmake" <<EOF
file(RPATH_CHANGE FILE "$payload/libmicache.so.0" OLD_RPATH "$old_rpath" NEW_RPATH "\$ORIGIN")
EOF
  cmake -P "$payload/.rpath.cmake"
  rm "$payload/.rpath.cmake"
fi

# Check from a copy elsewhere, so nothing can resolve through this build tree's absolute paths.
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
cp -a "$payload" "$check/p"
system='^(linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libstdc\+\+\.so\.6|libgcc_s\.so\.1|libz\.so\.1|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1)$'
bad=0
printf '%-28s %-32s %s\n' file RUNPATH "libraries from the folder"
for f in "${elves[@]}"; do
  runpath=$(readelf -d "$check/p/$f" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p')
  inside=()
  while read -r lib arrow where _; do
    [ -z "$lib" ] && continue
    if [ "$arrow" != "=>" ]; then
      [[ $lib =~ $system ]] && continue
      echo "  $f: $lib $arrow $where: unexpected" >&2
      bad=1
      continue
    fi
    if [ "$where" = not ]; then
      echo "  $f: $lib not found" >&2
      bad=1
    elif [[ $where == "$check/p/"* ]]; then
      inside+=("$lib")
    elif ! [[ $lib =~ $system ]]; then
      echo "  $f: $lib resolves outside the folder ($where)" >&2
      bad=1
    fi
  done < <(env -u LD_LIBRARY_PATH ldd "$check/p/$f")
  printf '%-28s %-32s %s\n' "$f" "${runpath:-none}" "${inside[*]:-none}"
done
# The binaries start from the copy, run from another directory (gtest lists its cases, the CLI its devices).
(cd "$check" && env -u LD_LIBRARY_PATH p/examples/micache info >/dev/null) || { echo "micache info fails from a copy" >&2; bad=1; }
(cd "$check" && env -u LD_LIBRARY_PATH p/tests/micache_tests --gtest_list_tests >/dev/null) || {
  echo "micache_tests fails from a copy" >&2
  bad=1
}
(cd "$check" && env -u LD_LIBRARY_PATH p/tests/micache_cuda_tests --gtest_list_tests >/dev/null) || {
  echo "micache_cuda_tests fails from a copy" >&2
  bad=1
}
(cd "$check" && env -u LD_LIBRARY_PATH p/bench/micache_bench --benchmark_list_tests >/dev/null) || {
  echo "micache_bench fails from a copy" >&2
  bad=1
}

{
  echo "micache GPU payload"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "($(git -C "$root" status --porcelain 2>/dev/null | wc -l) paths changed in the working tree)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(grep -m1 '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)," \
    "sm_$(grep -m1 '^MICACHE_CUDA_ARCHITECTURES:' "$build/CMakeCache.txt" | cut -d= -f2)"
  echo "needs on the host: glibc $(objdump -T "${elves[@]/#/$payload/}" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)," \
    "libstdc++ $(objdump -T "${elves[@]/#/$payload/}" 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n1)," \
    "a driver for CUDA 13"
  echo
  (cd "$payload" && find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "${f#./}"
  done)
} >"$payload/MANIFEST.txt"
cat "$payload/MANIFEST.txt"

bytes=$(du -sb "$payload" | cut -f1)
echo
echo "payload: $payload, $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB; limit $limit_mib MiB)"
if [ "$bytes" -ge $((limit_mib * 1048576)) ]; then
  echo "payload over $limit_mib MiB" >&2
  bad=1
fi
if [ "$bad" != 0 ]; then
  echo "payload check FAILED" >&2
  exit 1
fi
echo "payload check passed: every binary finds its libraries inside the folder (or in the base system)"
