// The `micache` command-line program.
//   micache demo [--device cpu|cuda]   attention queries on a small causal model's patterns (default)
//   micache info                       build, backends and devices
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "micache/micache.hpp"

namespace {

using namespace micache;

const std::vector<std::string> kTokens{"<s>", "The", "cat", "sat", "on", "the", "mat", ".", "The", "cat"};
constexpr std::size_t kLayers = 4;
constexpr std::size_t kHeads = 4;

// Post-softmax causal pattern of one head from hand-made scores: head 0 sinks
// into <s>, head 1 looks at the previous token, head 2 is an induction head
// (the token after the previous occurrence of the current token), head 3 is
// near-uniform. Deeper layers sharpen the pattern.
std::vector<float> head_pattern(std::size_t layer, std::size_t head) {
  const std::size_t n = kTokens.size();
  std::vector<float> p(n * n, 0.0f);
  const float sharpness = 1.0f + static_cast<float>(layer);
  for (std::size_t q = 0; q < n; ++q) {
    std::vector<float> score(q + 1, 0.0f);
    for (std::size_t k = 0; k <= q; ++k) {
      const bool sink = k == 0;
      const bool previous = k + 1 == q;
      bool induction = false;
      for (std::size_t j = 0; j < q; ++j) {
        induction |= k == j + 1 && kTokens[j] == kTokens[q];
      }
      const bool target = head == 0 ? sink : head == 1 ? previous : head == 2 ? induction : false;
      score[k] = (target ? 3.0f * sharpness : 0.0f) + 0.1f * static_cast<float>((q * 7 + k * 3 + head) % 5);
    }
    float sum = 0.0f;
    for (float& s : score) sum += (s = std::exp(s));
    for (std::size_t k = 0; k <= q; ++k) p[q * n + k] = score[k] / sum;
  }
  return p;
}

AttentionCache build_cache(Device device) {
  const std::size_t n = kTokens.size();
  AttentionCache cache = AttentionCache::with_capacity(kLayers);
  for (std::size_t layer = 0; layer < kLayers; ++layer) {
    std::vector<float> pattern;
    for (std::size_t head = 0; head < kHeads; ++head) {
      const std::vector<float> h = head_pattern(layer, head);
      pattern.insert(pattern.end(), h.begin(), h.end());
    }
    cache.push(Tensor::from_host(pattern, {1, kHeads, n, n}, DType::BF16, device));
  }
  return cache;
}

std::string quoted(std::size_t position) { return "'" + kTokens[position] + "'@" + std::to_string(position); }

int demo(Device device) {
  const Backend& backend = backend_for(device);
  std::printf("micache %s demo on %s (%s backend)\n", MICACHE_VERSION_STRING, device.to_string().c_str(),
              backend.name());
  std::printf("tokens:");
  for (const std::string& t : kTokens) std::printf(" %s", t.c_str());
  std::printf("\npatterns: %zu layers x [1, %zu heads, %zu, %zu] bf16, built from a toy causal model\n\n", kLayers,
              kHeads, kTokens.size(), kTokens.size());

  const AttentionCache cache = build_cache(device);
  const std::size_t last = kTokens.size() - 1;
  std::printf("top-3 positions the last token %s attends to (mean over heads):\n", quoted(last).c_str());
  for (std::size_t layer = 0; layer < cache.n_layers(); ++layer) {
    std::printf("  layer %zu:", layer);
    for (const auto& [position, weight] : cache.top_attended_positions(layer, last, 3)) {
      std::printf("  %-10s %.3f", quoted(position).c_str(), static_cast<double>(weight));
    }
    std::printf("\n");
  }

  std::printf("\nattention from %s to the first token %s, per layer:", quoted(last).c_str(), quoted(0).c_str());
  for (std::size_t layer = 0; layer < cache.n_layers(); ++layer) {
    std::printf(" %.3f", static_cast<double>(cache.attention_to_position(layer, 0)[last]));
  }

  const HeadSelection induction{.batch = 0, .heads = {2}};
  const auto top = cache.top_attended_positions(kLayers - 1, last, 1, induction);
  std::printf("\n\ninduction head (layer %zu, head 2): %s looks at %s (%.3f) -- the token that followed '%s' before\n",
              kLayers - 1, quoted(last).c_str(), quoted(top[0].first).c_str(), static_cast<double>(top[0].second),
              kTokens[last].c_str());

  const TopK all = cache.top_attended_all(kLayers - 1, 1);
  const std::vector<std::int32_t> best = all.indices.to_host_i32();
  std::printf("layer %zu, strongest key of every query (one launch):", kLayers - 1);
  for (std::size_t q = 0; q < best.size(); ++q) std::printf(" %zu->%d", q, best[q]);

  const MemoryStats stats = backend.memory_stats();
  std::printf("\n\n%s memory: %zu bytes in use, %zu reserved, peak %zu\n", device.to_string().c_str(), stats.in_use,
              stats.reserved, stats.peak);
  return 0;
}

int info() {
  std::printf("micache %s\n", MICACHE_VERSION_STRING);
  std::printf("CUDA backend built: %s\n", cuda_built() ? "yes" : "no");
  const std::string reason = cuda_unavailable_reason();
  std::printf("CUDA usable: %s\n", reason.empty() ? "yes" : ("no (" + reason + ")").c_str());
  std::printf("devices:");
  for (const Device& d : available_devices()) std::printf(" %s", d.to_string().c_str());
  std::printf("\nbest device: %s\n", Device::best().to_string().c_str());
  return 0;
}

int usage() {
  std::fprintf(stderr, "usage: micache [demo [--device cpu|cuda|cuda:N] | info]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "demo";
  try {
    if (command == "info") {
      return info();
    }
    if (command != "demo") {
      return usage();
    }
    Device device = Device::best();
    if (argc == 4 && std::strcmp(argv[2], "--device") == 0) {
      const std::string name = argv[3];
      if (name == "cpu") {
        device = Device::cpu();
      } else if (name.rfind("cuda", 0) == 0) {
        device = Device::cuda(name.size() > 5 ? std::stoi(name.substr(5)) : 0);
      } else {
        return usage();
      }
    } else if (argc > 2) {
      return usage();
    }
    return demo(device);
  } catch (const Error& e) {
    std::fprintf(stderr, "micache: %s error: %s\n", to_string(e.code()), e.what());
    return 1;
  }
}
