// Shared by the benchmark files: how each one reports the bytes it moved.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>

namespace micache::bench {

/// Records `bytes_per_iteration` (the fewest bytes the operation must move:
/// inputs read once, outputs written once) so Google Benchmark prints the
/// effective bandwidth as bytes_per_second.
inline void report_bytes(benchmark::State& state, std::size_t bytes_per_iteration) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_iteration));
}

}  // namespace micache::bench
