// Shared by the benchmark files: names, timing, how each one reports the bytes it moved, and the copy roof.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "micache/micache.hpp"

namespace micache::bench {

/// `op/impl/device/dtype:D/heads:H/seq:S[/k:K]`: the key scripts/bench_table.py
/// joins micache, its in-process baselines and scripts/bench_torch.py on. `k`
/// 0 leaves the k field out.
inline std::string bench_name(std::string_view op, std::string_view impl, Device device, DType dtype, std::size_t heads,
                              std::size_t seq, std::size_t k = 0) {
  std::string name = std::string(op) + "/" + std::string(impl) + "/" + device.to_string() +
                     "/dtype:" + dtype_name(dtype) + "/heads:" + std::to_string(heads) + "/seq:" + std::to_string(seq);
  if (k != 0) name += "/k:" + std::to_string(k);
  return name;
}

#if MICACHE_BENCH_CUDA
/// Runs `body` between two cudaEvents recorded on the default stream (the
/// stream every micache call here is issued on), waits for the second and
/// returns the seconds between them (bench/cuda_timer.cpp).
double default_stream_seconds(const std::function<void()>& body);
#endif

/// Times one iteration of `body` for Google Benchmark's manual time (register
/// with UseManualTime()). On a CUDA device: the time between cudaEvents on the
/// default stream around `body` (what the device spent, host launch latency
/// only where the device waited for it). On the CPU: wall-clock time of `body`
/// and a backend synchronisation.
inline void time_iteration(benchmark::State& state, Device device, const std::function<void()>& body) {
#if MICACHE_BENCH_CUDA
  if (device.is_cuda()) {
    state.SetIterationTime(default_stream_seconds(body));
    return;
  }
#endif
  const auto start = std::chrono::steady_clock::now();
  body();
  backend_for(device).synchronize({});
  state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

/// Records `bytes_per_iteration` (the fewest bytes the operation must move:
/// inputs read once, outputs written once; the same for every impl of an op)
/// so Google Benchmark prints the effective bandwidth as bytes_per_second.
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
    time_iteration(state, device, [&] { backend.copy_device_to_device(dst.mutable_data(), src.data(), bytes, {}); });
  }
  report_bytes(state, 2 * bytes);
}

}  // namespace micache::bench
