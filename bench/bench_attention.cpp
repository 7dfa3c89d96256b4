// Attention-cache benchmarks on every available device over a matrix of
// pattern sizes and dtypes, each beside its peers in the same run: the way
// candle-mi does the same work, the obvious C++ (std::partial_sort over host
// head-mean rows), CUB's segmented sort (CUDA builds) and a device copy of the
// pattern's bytes as the bandwidth roof. scripts/bench_torch.py times PyTorch
// on the same sizes; scripts/bench_table.py joins them by name.
//
// Patterns are [1, heads, seq, seq], F32 or BF16. Names are
// op/impl/device/dtype:D/heads:H/seq:S[/k:K] (bench_report.hpp). "bytes" is
// the fewest bytes the operation must move (the pattern elements it needs read
// once, its output written once), the same for every impl of an op, so
// bytes_per_second is its effective bandwidth.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_report.hpp"
#include "micache/micache.hpp"
#if MICACHE_BENCH_CUDA
#include "bench/cub_baseline.hpp"
#endif

namespace {

using micache::AttentionCache;
using micache::Backend;
using micache::Device;
using micache::DType;
using micache::HeadMeanView;
using micache::Tensor;
using micache::bench::bench_name;
using micache::bench::report_bytes;
using micache::bench::time_iteration;

struct Pattern {
  Device device;
  DType dtype;
  std::size_t heads;
  std::size_t seq;

  std::size_t elements() const { return heads * seq * seq; }
  std::size_t nbytes() const { return elements() * micache::dtype_size(dtype); }
  std::string name(const char* op, const char* impl, std::size_t k = 0) const {
    return bench_name(op, impl, device, dtype, heads, seq, k);
  }
  friend bool operator==(const Pattern&, const Pattern&) = default;
};

// Sizes every query runs on; the one-row query also runs on one_row_size.
constexpr std::pair<std::size_t, std::size_t> kSizes[] = {{12, 512}, {32, 2048}};

// The largest one-row size: [1, 32, 8192, 8192] is 4 GiB in BF16, for a GPU;
// the CPU stops at 4096 (1 GiB in BF16, 2 GiB in F32).
std::pair<std::size_t, std::size_t> one_row_size(Device device) {
  return device.is_cpu() ? std::pair<std::size_t, std::size_t>{32, 4096}
                         : std::pair<std::size_t, std::size_t>{32, 8192};
}

// Pseudo-random attention-like values in [0, 2 / seq) without a softmax (data
// generation is not what is measured), made one head at a time so the host
// holds seq^2 floats at most.
Tensor make_pattern(const Pattern& p) {
  Backend& backend = micache::backend_for(p.device);
  Tensor pattern = Tensor::empty({1, p.heads, p.seq, p.seq}, p.dtype, p.device);
  auto* dst = static_cast<std::byte*>(pattern.mutable_data());
  std::vector<float> values(p.seq * p.seq);
  std::uint32_t state = 2463534242u;
  const float scale = (1.0f / 16777216.0f) * (2.0f / static_cast<float>(p.seq));
  for (std::size_t h = 0; h < p.heads; ++h) {
    for (float& v : values) {
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      v = static_cast<float>(state >> 8) * scale;
    }
    const Tensor head = Tensor::from_host(values, {p.seq, p.seq}, p.dtype, p.device);
    backend.copy_device_to_device(dst + h * head.nbytes(), head.data(), head.nbytes(), {});
  }
  backend.synchronize({});
  return pattern;
}

// The pattern of the benchmark running. Benchmarks are registered grouped by
// pattern, so each is made once; a new one frees the previous one first.
const AttentionCache& pattern_cache(const Pattern& p) {
  static std::optional<Pattern> held;
  static AttentionCache cache;
  if (held != p) {
    held.reset();
    cache = AttentionCache();
    cache.push(make_pattern(p));
    held = p;
  }
  return cache;
}

// The head mean of every row of an F32 pattern into `out` ([seq, seq] F32), on its device.
void head_mean_rows(const Pattern& p, const Tensor& f32, Tensor& out) {
  HeadMeanView view;
  view.data = f32.data();
  view.dtype = DType::F32;
  view.head_stride = p.seq * p.seq;
  view.n_rows = p.seq;
  view.row_stride = p.seq;
  view.n_cols = p.seq;
  view.heads.count = static_cast<std::uint32_t>(p.heads);
  micache::backend_for(p.device).head_mean(view, static_cast<float*>(out.mutable_data()), {});
}

// candle-mi's first step: the whole pattern to F32 (candle's to_dtype returns
// the same storage when it already is F32).
Tensor candle_to_f32(const Tensor& pattern) {
  return pattern.dtype() == DType::F32 ? pattern : pattern.to_dtype(DType::F32);
}

// One query row, head-averaged: reads heads * seq elements, writes seq floats.
std::size_t row_bytes(const Pattern& p) { return p.heads * p.seq * micache::dtype_size(p.dtype) + p.seq * 4; }

// Every row, head-averaged: reads the pattern once, writes seq^2 floats.
std::size_t all_rows_bytes(const Pattern& p) { return p.nbytes() + p.seq * p.seq * 4; }

// Top-k of every row: reads the pattern once, writes seq * k (index, weight) pairs.
std::size_t top_k_bytes(const Pattern& p, std::size_t k) { return p.nbytes() + p.seq * k * 8; }

// One-row head mean, micache (attention_from_position_tensor), a new row each iteration.
void row_query_micache(benchmark::State& state, Pattern p) {
  const AttentionCache& cache = pattern_cache(p);
  std::size_t q = 0;
  for (auto _ : state) {
    time_iteration(state, p.device,
                   [&] { benchmark::DoNotOptimize(cache.attention_from_position_tensor(0, q++ % p.seq)); });
  }
  report_bytes(state, row_bytes(p));
}

// One-row head mean, candle-mi's way (AttentionCache::attention_from_position):
// the whole pattern to F32, then narrow to the row and average over heads.
void row_query_candle_way(benchmark::State& state, Pattern p) {
  const Tensor& pattern = *pattern_cache(p).get_layer(0);
  Backend& backend = micache::backend_for(p.device);
  std::size_t q = 0;
  for (auto _ : state) {
    time_iteration(state, p.device, [&] {
      const Tensor f32 = candle_to_f32(pattern);
      Tensor row = Tensor::empty({p.seq}, DType::F32, p.device);
      HeadMeanView view;
      view.data = f32.data();
      view.dtype = DType::F32;
      view.offset = (q++ % p.seq) * p.seq;
      view.head_stride = p.seq * p.seq;
      view.n_rows = 1;
      view.n_cols = p.seq;
      view.heads.count = static_cast<std::uint32_t>(p.heads);
      backend.head_mean(view, static_cast<float*>(row.mutable_data()), {});
      benchmark::DoNotOptimize(row);
    });
  }
  report_bytes(state, row_bytes(p));
}

// The whole [seq, seq] head mean, micache (head_mean).
void head_mean_all_micache(benchmark::State& state, Pattern p) {
  const AttentionCache& cache = pattern_cache(p);
  for (auto _ : state) {
    time_iteration(state, p.device, [&] { benchmark::DoNotOptimize(cache.head_mean(0)); });
  }
  report_bytes(state, all_rows_bytes(p));
}

// Top-k of every row, micache (top_attended_all: head mean fused into the selection).
void top_k_micache(benchmark::State& state, Pattern p, std::size_t k) {
  const AttentionCache& cache = pattern_cache(p);
  for (auto _ : state) {
    time_iteration(state, p.device, [&] { benchmark::DoNotOptimize(cache.top_attended_all(0, k)); });
  }
  report_bytes(state, top_k_bytes(p, k));
}

// The obvious C++ on a host pattern: per row, the head mean into a float row
// (heads summed in order), then std::partial_sort of the column indices by
// weight descending (ties: lower index) and the first k kept.
template <class Element, class Load>
void partial_sort_rows(const Pattern& p, const Element* pattern, Load load, std::size_t k, std::int32_t* indices,
                       float* weights) {
  std::vector<float> mean(p.seq);
  std::vector<std::int32_t> order(p.seq);
  const auto count = static_cast<float>(p.heads);
  for (std::size_t r = 0; r < p.seq; ++r) {
    std::fill(mean.begin(), mean.end(), 0.0f);
    for (std::size_t h = 0; h < p.heads; ++h) {
      const Element* row = pattern + (h * p.seq + r) * p.seq;
      for (std::size_t c = 0; c < p.seq; ++c) mean[c] += load(row[c]);
    }
    for (float& m : mean) m /= count;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(
        order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
        [&](std::int32_t a, std::int32_t b) { return mean[a] > mean[b] || (mean[a] == mean[b] && a < b); });
    for (std::size_t j = 0; j < k; ++j) {
      indices[r * k + j] = order[j];
      weights[r * k + j] = mean[order[j]];
    }
  }
}

// Top-k of every row, std::partial_sort over host head-mean rows (CPU patterns).
void top_k_partial_sort(benchmark::State& state, Pattern p, std::size_t k) {
  const Tensor& pattern = *pattern_cache(p).get_layer(0);
  std::vector<std::int32_t> indices(p.seq * k);
  std::vector<float> weights(p.seq * k);
  for (auto _ : state) {
    time_iteration(state, p.device, [&] {
      if (p.dtype == DType::BF16) {
        partial_sort_rows(
            p, static_cast<const std::uint16_t*>(pattern.data()),
            [](std::uint16_t v) { return micache::bf16_to_f32(v); }, k, indices.data(), weights.data());
      } else {
        partial_sort_rows(
            p, static_cast<const float*>(pattern.data()), [](float v) { return v; }, k, indices.data(), weights.data());
      }
      benchmark::DoNotOptimize(indices.data());
      benchmark::DoNotOptimize(weights.data());
    });
  }
  report_bytes(state, top_k_bytes(p, k));
}

// Top-k of every row, candle-mi's way (top_attended_positions, with the
// conversion done once for all rows): the whole pattern to F32, the head mean
// of every row, to the host (to_vec), then per row a full stable sort of
// (index, weight) pairs by weight descending (Rust's sort_by), truncated to k.
void top_k_candle_way(benchmark::State& state, Pattern p, std::size_t k) {
  const Tensor& pattern = *pattern_cache(p).get_layer(0);
  std::vector<std::pair<std::size_t, float>> indexed(p.seq);
  std::vector<std::pair<std::size_t, float>> top(p.seq * k);
  for (auto _ : state) {
    time_iteration(state, p.device, [&] {
      const Tensor f32 = candle_to_f32(pattern);
      Tensor mean = Tensor::empty({p.seq, p.seq}, DType::F32, p.device);
      head_mean_rows(p, f32, mean);
      const std::vector<float> host = mean.to_host_f32();
      for (std::size_t r = 0; r < p.seq; ++r) {
        for (std::size_t c = 0; c < p.seq; ++c) indexed[c] = {c, host[r * p.seq + c]};
        std::stable_sort(indexed.begin(), indexed.end(),
                         [](const auto& a, const auto& b) { return a.second > b.second; });
        std::copy_n(indexed.begin(), k, top.begin() + static_cast<std::ptrdiff_t>(r * k));
      }
      benchmark::DoNotOptimize(top.data());
    });
  }
  report_bytes(state, top_k_bytes(p, k));
}

#if MICACHE_BENCH_CUDA
void check_cuda(int status, const char* what) {
  if (status != 0) throw std::runtime_error(std::string(what) + ": " + micache::bench::cuda_status_string(status));
}

// Top-k of every row, CUB's way: micache's head mean of every row (head_mean,
// materialised as [seq, seq] F32), then cub::DeviceSegmentedSort::SortPairsDescending
// of each row and its first k (bench_cub_baseline.cu). The head mean is
// included here as it is in micache's fused top-k. Scratch (offsets, column
// indices, CUB's temporary storage) is made once, untimed.
void top_k_cub_sort(benchmark::State& state, Pattern p, std::size_t k) {
  const AttentionCache& cache = pattern_cache(p);
  std::size_t scratch_bytes = 0;
  check_cuda(micache::bench::cub_sort_take_k_scratch_bytes(p.seq, p.seq, &scratch_bytes), "CUB scratch size");
  Tensor scratch = Tensor::empty({scratch_bytes}, DType::U8, p.device);
  check_cuda(micache::bench::cub_sort_take_k_prepare(scratch.mutable_data(), p.seq, p.seq), "CUB scratch");
  for (auto _ : state) {
    time_iteration(state, p.device, [&] {
      const Tensor mean = cache.head_mean(0);
      Tensor indices = Tensor::empty({p.seq, k}, DType::I32, p.device);
      Tensor weights = Tensor::empty({p.seq, k}, DType::F32, p.device);
      check_cuda(micache::bench::cub_sort_take_k(
                     static_cast<const float*>(mean.data()), p.seq, p.seq, k, scratch.mutable_data(),
                     static_cast<std::int32_t*>(indices.mutable_data()), static_cast<float*>(weights.mutable_data())),
                 "CUB sort + take k");
    });
  }
  report_bytes(state, top_k_bytes(p, k));
}
#endif

// The bandwidth roof: a device-to-device copy of the pattern's bytes (bytes: read + write).
void pattern_copy_roof(benchmark::State& state, Pattern p) {
  micache::bench::time_device_copy(state, p.device, p.nbytes());
}

// Registers one benchmark timed by time_iteration; `slow` ones (seconds an
// iteration on a CPU) get a fixed count of 2 iterations per repetition.
template <class Fn, class... Args>
void add(const std::string& name, benchmark::TimeUnit unit, bool slow, Fn fn, Args... args) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), fn, args...)->UseManualTime()->Unit(unit);
  if (slow) b->Iterations(2);
}

const bool registered = [] {
  constexpr auto us = benchmark::kMicrosecond;
  constexpr auto ms = benchmark::kMillisecond;
  for (const Device device : micache::available_devices()) {
    for (const DType dtype : {DType::BF16, DType::F32}) {
      for (const auto& [heads, seq] : kSizes) {
        const Pattern p{device, dtype, heads, seq};
        // candle-mi's ways convert or sort the whole pattern: slow on the CPU from 32 x 2048^2 up.
        const bool big_on_cpu = device.is_cpu() && p.elements() >= (std::size_t{32} << 22);
        add(p.name("row_query", "micache"), us, false, row_query_micache, p);
        add(p.name("row_query", "candle_way"), us, big_on_cpu && dtype != DType::F32, row_query_candle_way, p);
        add(p.name("head_mean_all", "micache"), ms, false, head_mean_all_micache, p);
        for (const std::size_t k : {1, 8, 32}) {
          add(p.name("top_k_all", "micache", k), ms, false, top_k_micache, p, k);
          if (device.is_cpu()) add(p.name("top_k_all", "partial_sort", k), ms, false, top_k_partial_sort, p, k);
          add(p.name("top_k_all", "candle_way", k), ms, big_on_cpu, top_k_candle_way, p, k);
#if MICACHE_BENCH_CUDA
          if (device.is_cuda()) add(p.name("top_k_all", "cub_sort", k), ms, false, top_k_cub_sort, p, k);
#endif
        }
        // k = 33 is micache's radix-select path on CUDA (the warp path stops at 32); on the CPU, the same code as 32.
        if (device.is_cuda()) add(p.name("top_k_all", "micache", 33), ms, false, top_k_micache, p, std::size_t{33});
        add(p.name("pattern_copy", "copy_roof"), ms, false, pattern_copy_roof, p);
      }
      const auto [heads, seq] = one_row_size(device);
      const Pattern p{device, dtype, heads, seq};
      add(p.name("row_query", "micache"), us, false, row_query_micache, p);
      add(p.name("row_query", "candle_way"), us, device.is_cpu() && dtype != DType::F32, row_query_candle_way, p);
      add(p.name("pattern_copy", "copy_roof"), ms, false, pattern_copy_roof, p);
    }
  }
  return true;
}();

}  // namespace
