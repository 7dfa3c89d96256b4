// Shared by the benchmark files: how each one reports the bytes it moved, and the copy roof.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>

#include "micache/micache.hpp"

namespace micache::bench {

/// Records `bytes_per_iteration` (the fewest bytes the operation must move:
/// inputs read once, outputs written once) so Google Benchmark prints the
/// effective bandwidth as bytes_per_second.
inline void report_bytes(benchmark::State& state, std::size_t bytes_per_iteration) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_iteration));
}

/// Times one device-to-device copy of `bytes` per iteration (both buffers
/// touched first, so the figure is bandwidth, not first-touch page faults):
/// the roof an operation moving the same bytes is compared with.
inline void time_device_copy(benchmark::State& state, Device device, std::size_t bytes) {
  Backend& backend = backend_for(device);
  Tensor src = Tensor::empty({bytes}, DType::U8, device);
  Tensor dst = Tensor::empty({bytes}, DType::U8, device);
  backend.copy_device_to_device(src.mutable_data(), dst.data(), bytes, {});
  backend.copy_device_to_device(dst.mutable_data(), src.data(), bytes, {});
  for (auto _ : state) {
    backend.copy_device_to_device(dst.mutable_data(), src.data(), bytes, {});
    backend.synchronize({});
  }
  report_bytes(state, 2 * bytes);
}

}  // namespace micache::bench
