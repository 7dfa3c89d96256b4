// Compressed KV cache benchmarks on every available device: encode (push a
// token of 32 heads), scoring (keys per second, effective bandwidth over the
// packed key records) and attention output, beside a device copy of the same
// record bytes as the bandwidth roof, in the same run.
//
// Geometry: 32 heads x 4096 tokens x head_dim 128, 4 bits, 32 projections
// (76-byte key records, 68-byte value records: 9.0 MiB of keys). Names are
// op/impl/device/dtype:f32/heads:32/seq:S (bench_report.hpp), S the tokens
// pushed (encode) or scored.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench/bench_report.hpp"
#include "micache/micache.hpp"

namespace {

using micache::Device;
using micache::DType;
using micache::MultiHeadKvCache;
using micache::Tensor;
using micache::bench::report_bytes;
using micache::bench::time_iteration;

constexpr std::size_t kHeads = 32;
constexpr std::size_t kTokens = 4096;
constexpr std::size_t kDim = 128;
const micache::KvCacheConfig kConfig{.head_dim = kDim, .bits = 4, .projections = 32, .seed = 7};

Tensor pseudo_normal(std::vector<std::size_t> shape, std::size_t seed, Device device) {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  std::vector<float> values(n);
  for (std::size_t i = 0; i < n; ++i) {
    // Sum of three uniforms, centred: bell-shaped, finite, cheap and deterministic.
    float sum = 0.0f;
    for (std::size_t k = 0; k < 3; ++k)
      sum += static_cast<float>(((i * 3 + k + seed) * 2654435761u) % 10007) / 10007.0f;
    values[i] = (sum - 1.5f) * 2.0f;
  }
  return Tensor::from_host(values, micache::Shape(shape), DType::F32, device);
}

// A cache of kTokens tokens, filled by one prefill push.
MultiHeadKvCache filled_cache(Device device) {
  MultiHeadKvCache cache(kHeads, kConfig, device);
  cache.heads().push(pseudo_normal({kHeads, kTokens, kDim}, 1, device),
                     pseudo_normal({kHeads, kTokens, kDim}, 2, device));
  return cache;
}

// One decode step: 32 heads' key and value, F32 on the device, encoded into
// records. Bytes: the 64 vectors read, their records written.
void encode_token(benchmark::State& state, Device device) {
  MultiHeadKvCache cache(kHeads, kConfig, device);
  const Tensor keys = pseudo_normal({kHeads, kDim}, 3, device);
  const Tensor values = pseudo_normal({kHeads, kDim}, 4, device);
  cache.heads().reserve(1024);
  for (auto _ : state) {
    if (cache.len() == 1024) cache.heads().keep_last(0);
    time_iteration(state, device, [&] { cache.heads().push(keys, values); });
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(2 * kHeads));  // vectors encoded
  report_bytes(state, 2 * kHeads * kDim * sizeof(float) +
                          kHeads * (cache.heads().key_record_bytes() + cache.heads().value_record_bytes()));
}

// Scores of 32 query heads against 4096 keys each: 131,072 keys per call.
// Bytes: the key records read, the scores written.
void score_all(benchmark::State& state, Device device) {
  const MultiHeadKvCache cache = filled_cache(device);
  const Tensor queries = pseudo_normal({kHeads, kDim}, 5, device);
  for (auto _ : state) {
    time_iteration(state, device, [&] { benchmark::DoNotOptimize(cache.heads().scores(queries)); });
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kHeads * kTokens));  // keys scored
  report_bytes(state, kHeads * kTokens * (cache.heads().key_record_bytes() + sizeof(float)));
}

// softmax(scores) . V for 32 query heads over 4096 tokens. Bytes: the key and value records read.
void attention_output(benchmark::State& state, Device device) {
  const MultiHeadKvCache cache = filled_cache(device);
  const Tensor queries = pseudo_normal({kHeads, kDim}, 6, device);
  for (auto _ : state) {
    time_iteration(state, device, [&] { benchmark::DoNotOptimize(cache.heads().attention_output(queries)); });
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kHeads * kTokens));  // tokens attended
  report_bytes(state, cache.heads().memory_usage());
}

// The roof for scoring: a device copy of the key records' bytes.
void key_bytes_copy_roof(benchmark::State& state, Device device) {
  micache::bench::time_device_copy(state, device,
                                   kHeads * kTokens * micache::detail::make_record_layout(kDim, 4, 32).record_bytes);
}

std::string name(const char* op, const char* impl, Device device, std::size_t seq) {
  return micache::bench::bench_name(op, impl, device, DType::F32, kHeads, seq);
}

const bool registered = [] {
  for (const Device device : micache::available_devices()) {
    const auto add = [&](const std::string& bench, void (*fn)(benchmark::State&, Device), benchmark::TimeUnit unit) {
      benchmark::RegisterBenchmark(bench.c_str(), fn, device)->UseManualTime()->Unit(unit);
    };
    add(name("compressed_encode_token", "micache", device, 1), encode_token, benchmark::kMicrosecond);
    add(name("compressed_score", "micache", device, kTokens), score_all, benchmark::kMillisecond);
    add(name("compressed_score", "copy_roof", device, kTokens), key_bytes_copy_roof, benchmark::kMillisecond);
    add(name("compressed_attention_output", "micache", device, kTokens), attention_output, benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
