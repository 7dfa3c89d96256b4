// KVCache benchmarks on every available device, against candle-mi's way (a new
// concatenated tensor per step; narrow then copy to really trim) and a plain
// device copy of the same bytes, in the same run.
//
// Geometry: 32 layers x [1, 8 kv heads, seq, 128] BF16 (4 KiB per token per
// layer for keys and values, 128 KiB per token for the model).
#include <benchmark/benchmark.h>

#include <vector>

#include "bench/bench_report.hpp"
#include "micache/micache.hpp"

namespace {

using micache::Backend;
using micache::Device;
using micache::DType;
using micache::KVCache;
using micache::Tensor;

constexpr std::size_t kLayers = 32;
constexpr std::size_t kKvHeads = 8;
constexpr std::size_t kHeadDim = 128;
constexpr std::size_t kTokenBytes = kKvHeads * kHeadDim * 2;  // one of K or V, one layer

Tensor random_tokens(std::size_t tokens, Device device) {
  std::vector<float> values(kKvHeads * tokens * kHeadDim);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f;
  return Tensor::from_host(values, {1, kKvHeads, tokens, kHeadDim}, DType::BF16, device);
}

// One decode step: append 1 token of K and V to each of the 32 layers.
void decode_micache(benchmark::State& state, Device device) {
  Backend& backend = micache::backend_for(device);
  const Tensor token = random_tokens(1, device);
  const Tensor prefix = random_tokens(1024, device);
  KVCache cache(kLayers);
  for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, prefix, prefix);
  cache.reserve(4096);
  for (auto _ : state) {
    if (cache.seq_len() == 4096) cache.trim_to(1024);  // O(1): moves the ring start
    for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, token, token);
    backend.synchronize({});
  }
  micache::bench::report_bytes(state, kLayers * 2 * kTokenBytes * 2);  // read + write of the new token's K and V
}

// candle-mi's way: each step builds a new [1, 8, len + 1, 128] tensor per K and V (Tensor::cat).
void decode_candle_way(benchmark::State& state, Device device) {
  Backend& backend = micache::backend_for(device);
  const Tensor token = random_tokens(1, device);
  std::vector<Tensor> keys(kLayers, random_tokens(1024, device));
  std::vector<Tensor> values = keys;
  const auto cat = [&](const Tensor& old) {
    const std::size_t len = old.dim(2);
    Tensor next = Tensor::empty({1, kKvHeads, len + 1, kHeadDim}, DType::BF16, device);
    // Tensor::cat of [old, token] along the sequence axis: two dense copies into the new tensor.
    const auto place = [&](const Tensor& part, std::size_t at) {
      micache::TokenCopy copy;
      copy.src[0] = part.data();
      copy.src_capacity = part.dim(2);
      copy.dst[0] = next.mutable_data();
      copy.dst_capacity = len + 1;
      copy.dst_start = at;
      copy.planes = kKvHeads;
      copy.tokens = part.dim(2);
      copy.token_bytes = kHeadDim * 2;
      backend.copy_tokens(copy, {});
    };
    place(old, 0);
    place(token, len);
    return next;
  };
  std::size_t moved = 0;
  for (auto _ : state) {
    for (std::size_t l = 0; l < kLayers; ++l) {
      moved += 2 * 2 * (keys[l].nbytes() + kTokenBytes);
      keys[l] = cat(keys[l]);
      values[l] = cat(values[l]);
    }
    backend.synchronize({});
    if (keys[0].dim(2) == 2048) {
      state.PauseTiming();
      std::fill(keys.begin(), keys.end(), random_tokens(1024, device));
      values = keys;
      state.ResumeTiming();
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(moved));
}

// Prefill: 2048 tokens into every layer of an empty cache.
void prefill_micache(benchmark::State& state, Device device) {
  Backend& backend = micache::backend_for(device);
  const Tensor prompt = random_tokens(2048, device);
  for (auto _ : state) {
    KVCache cache(kLayers);
    for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, prompt, prompt);
    backend.synchronize({});
  }
  micache::bench::report_bytes(state, kLayers * 2 * 2048 * kTokenBytes * 2);
}

// Times `shrink` on a fresh cache of 32 layers x 8192 tokens per iteration
// (the fill is untimed); it must leave 6144 tokens.
template <class Shrink>
void time_from_8192_to_6144(benchmark::State& state, Device device, Shrink shrink) {
  Backend& backend = micache::backend_for(device);
  const Tensor full = random_tokens(8192, device);
  for (auto _ : state) {
    state.PauseTiming();
    KVCache cache(kLayers);
    for (std::size_t l = 0; l < kLayers; ++l) cache.set_layer(l, full, full);
    backend.synchronize({});
    state.ResumeTiming();
    shrink(cache);
    backend.synchronize({});
  }
  micache::bench::report_bytes(state, kLayers * 2 * 6144 * kTokenBytes * 2);
}

// Trim 8192 tokens to the last 6144 and give the memory back: trim_to (moves
// nothing) + shrink_to_fit (one compaction moving each kept byte once).
void trim_compact_micache(benchmark::State& state, Device device) {
  time_from_8192_to_6144(state, device, [](KVCache& cache) {
    cache.trim_to(6144);
    cache.shrink_to_fit();
  });
}

// Heavy-hitter eviction of 8192 tokens to 6144 (5120 best-scored older tokens
// + the last 1024): device top-k of the scores, then one gather launch per
// layer moving each kept byte once. Same kept bytes as the trim above.
void evict_heavy_hitters_micache(benchmark::State& state, Device device) {
  std::vector<float> host_scores(8192);
  for (std::size_t t = 0; t < host_scores.size(); ++t) host_scores[t] = static_cast<float>((t * 2654435761u) % 8191);
  const Tensor scores = Tensor::from_host(host_scores, {8192}, DType::F32, device);
  time_from_8192_to_6144(state, device, [&](KVCache& cache) { cache.evict_heavy_hitters(scores, 5120, 1024); });
}

// The roof for the compaction: one device copy of the same kept bytes.
void trim_copy_roof(benchmark::State& state, Device device) {
  micache::bench::time_device_copy(state, device, kLayers * 2 * 6144 * kTokenBytes);
}

const bool registered = [] {
  for (const Device device : micache::available_devices()) {
    const std::string at = "/" + device.to_string();
    benchmark::RegisterBenchmark(("kv_decode_append/micache" + at).c_str(), decode_micache, device)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv_decode_append/candle_way" + at).c_str(), decode_candle_way, device)
        ->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv_prefill_2048/micache" + at).c_str(), prefill_micache, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv_trim_8192_to_6144_compact/micache" + at).c_str(), trim_compact_micache, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv_trim_8192_to_6144_compact/copy_roof" + at).c_str(), trim_copy_roof, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv_evict_heavy_hitters_8192_to_6144/micache" + at).c_str(),
                                 evict_heavy_hitters_micache, device)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  return true;
}();

}  // namespace
