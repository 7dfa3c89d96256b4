// `micache bench`: the core operations at a realistic size on one device, timed
// with the device synchronised, against a copy of the same bytes (the bandwidth
// roof). The Google Benchmark binary (bench/) has the full matrix and the peers.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "micache/micache.hpp"

namespace micache::cli {
namespace {

struct Case {
  std::string name;
  std::size_t bytes;  // fewest bytes the operation must move
  std::function<void()> run;
};

// Median seconds of `run` over repetitions (at least 3, until 0.5 s or 50 runs), after one warm-up.
double median_seconds(const std::function<void()>& run, Backend& backend) {
  run();
  backend.synchronize({});
  std::vector<double> times;
  double total = 0.0;
  while (times.size() < 3 || (total < 0.5 && times.size() < 50)) {
    const auto start = std::chrono::steady_clock::now();
    run();
    backend.synchronize({});
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    total += times.back();
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::vector<float> filler(std::size_t n) {
  std::vector<float> out(n);
  std::uint32_t state = 12345;
  for (float& x : out) {
    state = state * 1664525u + 1013904223u;
    x = static_cast<float>(state >> 8) / 16777216.0f;
  }
  return out;
}

}  // namespace

int run_bench(Device device, bool quick) {
  Backend& backend = backend_for(device);
  const std::size_t heads = 32, seq = quick ? 512 : 2048, layers = 32, kv_heads = 8, head_dim = 128;
  const std::size_t kv_tokens = quick ? 1024 : 4096;
  std::printf("micache %s bench on %s: %s\n", MICACHE_VERSION_STRING, device.to_string().c_str(),
              backend.description().c_str());
  std::printf("sizes: pattern [1, %zu, %zu, %zu] bf16; KV %zu layers x [1, %zu, ., %zu] bf16; compressed %zu heads x "
              "%zu tokens, 4 bits\n\n",
              heads, seq, seq, layers, kv_heads, head_dim, heads, kv_tokens);

  std::fprintf(stderr, "preparing data...\n");
  AttentionCache attention = AttentionCache::with_capacity(1);
  attention.push(Tensor::from_host(filler(heads * seq * seq), {1, heads, seq, seq}, DType::BF16, device));
  const std::size_t pattern_bytes = attention.get_layer(0)->nbytes();

  KVCache kv(layers);
  const Tensor token = Tensor::from_host(filler(kv_heads * head_dim), {1, kv_heads, 1, head_dim}, DType::BF16, device);
  for (std::size_t l = 0; l < layers; ++l) kv.append(l, token, token);
  kv.reserve(kv_tokens);  // no growth inside the timed appends (at most 52 of them)

  MultiHeadKvCache compressed(heads, {.head_dim = head_dim, .bits = 4, .projections = 32, .seed = 1}, device);
  const std::vector<float> gaussianish = filler(heads * kv_tokens * head_dim);
  compressed.heads().push(Tensor::from_host(gaussianish, {heads, kv_tokens, head_dim}, DType::F32, device),
                          Tensor::from_host(gaussianish, {heads, kv_tokens, head_dim}, DType::F32, device));
  const Tensor queries = Tensor::from_host(filler(heads * head_dim), {heads, head_dim}, DType::F32, device);
  const std::size_t record_bytes = heads * kv_tokens * compressed.heads().key_record_bytes();

  const Tensor copy_src = Tensor::from_host(filler(pattern_bytes / 2), {pattern_bytes / 2}, DType::BF16, device);
  Tensor copy_dst = Tensor::empty({pattern_bytes / 2}, DType::BF16, device);

  std::vector<Case> cases{
      {"one-row head mean (attention_from_position_tensor)", heads * seq * 2 + seq * 4,
       [&] { (void)attention.attention_from_position_tensor(0, seq - 1); }},
      {"whole head mean [seq, seq] (head_mean)", pattern_bytes + seq * seq * 4, [&] { (void)attention.head_mean(0); }},
      {"top-8 of every row (top_attended_all)", pattern_bytes + seq * 8 * 8,
       [&] { (void)attention.top_attended_all(0, 8); }},
      {"KV decode step: 1 token into 32 layers (append)", layers * 2 * 2 * kv_heads * head_dim * 2,
       [&] {
         for (std::size_t l = 0; l < layers; ++l) kv.append(l, token, token);
       }},
      {"compressed scores, 32 heads x all tokens (scores)", record_bytes, [&] { (void)compressed.heads().scores(queries); }},
      {"copy of the pattern's bytes (the roof)", 2 * pattern_bytes,
       [&] { backend.copy_device_to_device(copy_dst.mutable_data(), copy_src.data(), pattern_bytes, {}); }},
  };

  std::printf("%-52s %12s %12s %10s\n", "operation", "median", "moved", "GB/s");
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu/%zu] %s...\n", i + 1, cases.size(), cases[i].name.c_str());
    const double seconds = median_seconds(cases[i].run, backend);
    std::printf("%-52s %9.3f ms %9.2f MB %10.2f\n", cases[i].name.c_str(), seconds * 1e3,
                static_cast<double>(cases[i].bytes) / 1e6, static_cast<double>(cases[i].bytes) / seconds / 1e9);
  }
  return 0;
}

}  // namespace micache::cli
