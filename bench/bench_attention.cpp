// Attention-cache benchmarks on every available device, each against the way
// candle-mi (or a plain copy) does the same work, in the same run.
//
// Pattern: [1, 32, 2048, 2048] BF16 (256 MiB), the shape of one layer of a
// 32-head model at 2048 tokens. Times are wall-clock per call including the
// device synchronisation; "bytes" counts the fewest bytes each operation must
// move (inputs read once, outputs written once), so bytes_per_second is the
// effective bandwidth.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "bench/bench_report.hpp"
#include "micache/micache.hpp"

namespace {

using micache::AttentionCache;
using micache::Backend;
using micache::Device;
using micache::DType;
using micache::HeadMeanView;
using micache::Tensor;

constexpr std::size_t kHeads = 32;
constexpr std::size_t kSeq = 2048;

// Pseudo-random attention-like values without a softmax (data generation is
// not what is measured); xorshift keeps 134M values quick to make.
std::vector<float> bench_values(std::size_t n) {
  std::vector<float> values(n);
  std::uint32_t state = 2463534242u;
  for (float& v : values) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    v = static_cast<float>(state >> 8) * (1.0f / 16777216.0f) * (2.0f / kSeq);
  }
  return values;
}

const AttentionCache& pattern_cache(Device device) {
  static std::vector<std::pair<Device, AttentionCache>> caches;
  for (const auto& [d, cache] : caches) {
    if (d == device) return cache;
  }
  const std::vector<float> values = bench_values(kHeads * kSeq * kSeq);
  AttentionCache cache;
  cache.push(Tensor::from_host(values, {1, kHeads, kSeq, kSeq}, DType::BF16, device));
  caches.emplace_back(device, std::move(cache));
  return caches.back().second;
}

// One query row, head-averaged: reads heads * seq_k BF16 values, writes seq_k floats.
void row_query_micache(benchmark::State& state, Device device) {
  const AttentionCache& cache = pattern_cache(device);
  Backend& backend = micache::backend_for(device);
  std::size_t q = 0;
  for (auto _ : state) {
    Tensor row = cache.attention_from_position_tensor(0, q++ % kSeq);
    backend.synchronize({});
    benchmark::DoNotOptimize(row);
  }
  micache::bench::report_bytes(state, kHeads * kSeq * 2 + kSeq * 4);
}

// candle-mi's way: convert the whole pattern to F32, then narrow to the row and average.
void row_query_candle_way(benchmark::State& state, Device device) {
  const AttentionCache& cache = pattern_cache(device);
  Backend& backend = micache::backend_for(device);
  const Tensor& pattern = *cache.get_layer(0);
  std::size_t q = 0;
  for (auto _ : state) {
    const Tensor f32 = pattern.to_dtype(DType::F32);
    Tensor row = Tensor::empty({kSeq}, DType::F32, device);
    HeadMeanView view;
    view.data = f32.data();
    view.dtype = DType::F32;
    view.offset = (q++ % kSeq) * kSeq;
    view.head_stride = kSeq * kSeq;
    view.n_rows = 1;
    view.n_cols = kSeq;
    view.heads.count = kHeads;
    backend.head_mean(view, static_cast<float*>(row.mutable_data()), {});
    backend.synchronize({});
    benchmark::DoNotOptimize(row);
  }
  // What it must move: the pattern read (2 B) and written as F32 (4 B), then the row.
  micache::bench::report_bytes(state, kHeads * kSeq * kSeq * 6 + kHeads * kSeq * 4 + kSeq * 4);
}

// The whole [seq_q, seq_k] head mean: reads the pattern once, writes seq^2 floats.
void head_mean_all(benchmark::State& state, Device device) {
  const AttentionCache& cache = pattern_cache(device);
  Backend& backend = micache::backend_for(device);
  for (auto _ : state) {
    Tensor mean = cache.head_mean(0);
    backend.synchronize({});
    benchmark::DoNotOptimize(mean);
  }
  micache::bench::report_bytes(state, kHeads * kSeq * kSeq * 2 + kSeq * kSeq * 4);
}

// Top-k of every query row, head mean fused: reads the pattern once.
void top_k_all(benchmark::State& state, Device device) {
  const AttentionCache& cache = pattern_cache(device);
  Backend& backend = micache::backend_for(device);
  const auto k = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    micache::TopK top = cache.top_attended_all(0, k);
    backend.synchronize({});
    benchmark::DoNotOptimize(top);
  }
  micache::bench::report_bytes(state, kHeads * kSeq * kSeq * 2 + kSeq * k * 8);
}

// The bandwidth roof: a device-to-device copy of the pattern's bytes (read + write).
void copy_roof(benchmark::State& state, Device device) {
  micache::bench::time_device_copy(state, device, pattern_cache(device).get_layer(0)->nbytes());
}

const bool registered = [] {
  for (const Device device : micache::available_devices()) {
    const std::string at = "/" + device.to_string();
    benchmark::RegisterBenchmark(("row_query/micache" + at).c_str(), row_query_micache, device)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark(("row_query/candle_way" + at).c_str(), row_query_candle_way, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(device.is_cpu() ? 3 : 20);
    benchmark::RegisterBenchmark(("head_mean_all" + at).c_str(), head_mean_all, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("top_k_all" + at).c_str(), top_k_all, device)
        ->Arg(1)->Arg(8)->Arg(32)->Arg(33)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("copy_roof" + at).c_str(), copy_roof, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  return true;
}();

}  // namespace
