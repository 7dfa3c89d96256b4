// KVCache benchmarks on every available device, against candle-mi's way (a new
// concatenated tensor per step; narrow then copy to really trim) and a plain
// device copy of the same bytes, in the same run. scripts/bench_torch.py times
// PyTorch's torch.cat and slicing on the same geometry.
//
// Geometry: 32 layers x [1, 8 kv heads, seq, 128] BF16 (4 KiB per token per
// layer for keys and values, 128 KiB per token for the model). Names are
// op/impl/device/dtype:bf16/heads:8/seq:S (bench_report.hpp), S the tokens
// held before the operation; "bytes" is the fewest bytes the operation must
// move, the same for every impl of an op.
#include <benchmark/benchmark.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_report.hpp"
#include "micache/micache.hpp"

namespace {

using micache::Backend;
using micache::Device;
using micache::DType;
using micache::KVCache;
using micache::OwnedStream;
using micache::Stream;
using micache::Tensor;
using micache::bench::report_bytes;
using micache::bench::time_iteration;

constexpr std::size_t kLayers = 32;
constexpr std::size_t kKvHeads = 8;
constexpr std::size_t kHeadDim = 128;
constexpr std::size_t kTokenBytes = kKvHeads * kHeadDim * 2;  // one of K or V, one layer
constexpr std::size_t kDecodeContext = 1024;                  // tokens held when a decode step appends one
constexpr std::size_t kPrefill = 2048;
constexpr std::size_t kTrimFrom = 8192;
constexpr std::size_t kTrimTo = 6144;
constexpr int kServerThreads = 8;

Tensor random_tokens(std::size_t tokens, Device device, Stream stream = {}) {
  std::vector<float> values(kKvHeads * tokens * kHeadDim);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f;
  return Tensor::from_host(values, {1, kKvHeads, tokens, kHeadDim}, DType::BF16, device, stream);
}

// 32 layers of 1024 tokens on `stream`, with room for 2048.
KVCache decode_ready_cache(Device device, Stream stream) {
  const Tensor prefix = random_tokens(kDecodeContext, device, stream);
  KVCache cache(kLayers, stream);
  for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, prefix, prefix);
  cache.reserve(2 * kDecodeContext);
  return cache;
}

// One decode step at a context of 1024 tokens: append 1 token of K and V to each
// of the 32 layers (ring buffers, capacity reserved; a trim back to 1024 tokens
// after each step, untimed, moves the ring start only). Bytes: the new token's
// K and V read and written.
void decode_micache(benchmark::State& state, Device device) {
  const Tensor token = random_tokens(1, device);
  KVCache cache = decode_ready_cache(device, {});
  for (auto _ : state) {
    time_iteration(state, device, [&] {
      for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, token, token);
    });
    cache.trim_to(kDecodeContext);
  }
  report_bytes(state, kLayers * 2 * kTokenBytes * 2);
}

// The decode step above in each of 8 threads at once, as a server running 8
// requests: every thread has its own 32-layer cache and waits for its own step.
// With `own_streams` each thread's cache works on its own OwnedStream; without,
// every cache is on the default stream, where the threads' work serialises.
// Wall time per step of one thread; bytes summed over the threads.
void decode_threads(benchmark::State& state, Device device, bool own_streams) {
  std::optional<OwnedStream> owned;
  if (own_streams) owned.emplace(device);
  const Stream stream = owned ? owned->get() : Stream{};
  Backend& backend = micache::backend_for(device);
  const Tensor token = random_tokens(1, device, stream);
  KVCache cache = decode_ready_cache(device, stream);
  backend.synchronize(stream);
  for (auto _ : state) {
    for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, token, token);
    backend.synchronize(stream);
    cache.trim_to(kDecodeContext);
  }
  report_bytes(state, kLayers * 2 * kTokenBytes * 2);
}

void decode_threads_default_stream(benchmark::State& state, Device device) { decode_threads(state, device, false); }
void decode_threads_own_streams(benchmark::State& state, Device device) { decode_threads(state, device, true); }

// The same decode step, candle-mi's way: a new [1, 8, 1025, 128] tensor per K and
// V per layer (Tensor::cat of the 1024 held tokens and the new one), the held
// tensors kept so every step starts from 1024 tokens.
void decode_candle_way(benchmark::State& state, Device device) {
  Backend& backend = micache::backend_for(device);
  const Tensor token = random_tokens(1, device);
  const Tensor held = random_tokens(kDecodeContext, device);
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
  for (auto _ : state) {
    time_iteration(state, device, [&] {
      for (std::size_t l = 0; l < kLayers; ++l) {
        benchmark::DoNotOptimize(cat(held));  // keys
        benchmark::DoNotOptimize(cat(held));  // values
      }
    });
  }
  report_bytes(state, kLayers * 2 * kTokenBytes * 2);
}

// Prefill: 2048 tokens into every layer of an empty cache. Bytes: the prompt's K
// and V read and written for each layer.
void prefill_micache(benchmark::State& state, Device device) {
  const Tensor prompt = random_tokens(kPrefill, device);
  for (auto _ : state) {
    time_iteration(state, device, [&] {
      KVCache cache(kLayers);
      for (std::size_t l = 0; l < kLayers; ++l) cache.append(l, prompt, prompt);
    });
  }
  report_bytes(state, kLayers * 2 * kPrefill * kTokenBytes * 2);
}

// Times `shrink` on a fresh cache of 32 layers x 8192 tokens per iteration
// (the fill is untimed); it must leave 6144 tokens. Bytes: the kept K and V
// read and written once.
template <class Shrink>
void time_from_8192_to_6144(benchmark::State& state, Device device, Shrink shrink) {
  Backend& backend = micache::backend_for(device);
  const Tensor full = random_tokens(kTrimFrom, device);
  for (auto _ : state) {
    KVCache cache(kLayers);
    for (std::size_t l = 0; l < kLayers; ++l) cache.set_layer(l, full, full);
    backend.synchronize({});
    time_iteration(state, device, [&] { shrink(cache); });
  }
  report_bytes(state, kLayers * 2 * kTrimTo * kTokenBytes * 2);
}

// Trim 8192 tokens to the last 6144 and give the memory back: trim_to (moves
// nothing) + shrink_to_fit (one compaction moving each kept byte once).
void trim_compact_micache(benchmark::State& state, Device device) {
  time_from_8192_to_6144(state, device, [](KVCache& cache) {
    cache.trim_to(kTrimTo);
    cache.shrink_to_fit();
  });
}

// Heavy-hitter eviction of 8192 tokens to 6144 (5120 best-scored older tokens
// + the last 1024): device top-k of the scores, then one gather launch per
// layer moving each kept byte once. Same kept bytes as the trim above.
void evict_heavy_hitters_micache(benchmark::State& state, Device device) {
  std::vector<float> host_scores(kTrimFrom);
  for (std::size_t t = 0; t < host_scores.size(); ++t) host_scores[t] = static_cast<float>((t * 2654435761u) % 8191);
  const Tensor scores = Tensor::from_host(host_scores, {kTrimFrom}, DType::F32, device);
  time_from_8192_to_6144(state, device, [&](KVCache& cache) { cache.evict_heavy_hitters(scores, 5120, 1024); });
}

// The roof for the compaction: one device copy of the same kept bytes.
void trim_copy_roof(benchmark::State& state, Device device) {
  micache::bench::time_device_copy(state, device, kLayers * 2 * kTrimTo * kTokenBytes);
}

std::string name(const char* op, const char* impl, Device device, std::size_t seq) {
  return micache::bench::bench_name(op, impl, device, DType::BF16, kKvHeads, seq);
}

const bool registered = [] {
  for (const Device device : micache::available_devices()) {
    const auto add = [&](const std::string& bench, void (*fn)(benchmark::State&, Device), benchmark::TimeUnit unit) {
      benchmark::RegisterBenchmark(bench.c_str(), fn, device)->UseManualTime()->Unit(unit);
    };
    add(name("kv_decode_append", "micache", device, kDecodeContext), decode_micache, benchmark::kMicrosecond);
    add(name("kv_decode_append", "candle_way", device, kDecodeContext), decode_candle_way, benchmark::kMicrosecond);
    for (const auto& [impl, fn] : {std::pair{"micache", &decode_threads_own_streams},
                                   std::pair{"default_stream", &decode_threads_default_stream}}) {
      benchmark::RegisterBenchmark(name("kv_decode_append_8_threads", impl, device, kDecodeContext).c_str(), fn,
                                   device)
          ->Threads(kServerThreads)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
    add(name("kv_prefill", "micache", device, kPrefill), prefill_micache, benchmark::kMillisecond);
    add(name("kv_trim", "micache", device, kTrimFrom), trim_compact_micache, benchmark::kMillisecond);
    add(name("kv_trim", "copy_roof", device, kTrimFrom), trim_copy_roof, benchmark::kMillisecond);
    add(name("kv_evict_heavy_hitters", "micache", device, kTrimFrom), evict_heavy_hitters_micache,
        benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
