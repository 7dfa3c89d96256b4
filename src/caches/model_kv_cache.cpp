#include "micache/model_kv_cache.hpp"

#include <utility>

#include "src/core/checks.hpp"

namespace micache {
namespace {

constexpr std::size_t kLayerSeedStride = 100;  // bitpolar's: layer l takes seed + 100 l

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
// C++20 deduces an aggregate's arguments by itself; clang 14 (the fuzz preset) needs the guide.
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

KvCacheConfig layer_config(std::size_t head_dim, unsigned bits, std::size_t projections, std::uint64_t seed,
                           std::size_t layer) {
  return {.head_dim = head_dim, .bits = bits, .projections = projections, .seed = seed + kLayerSeedStride * layer};
}

// `num_layers` Global layers of 8 kv heads and `num_query_heads` query heads of head_dim 128.
ModelKvCache llama3_cache(std::size_t num_layers, std::size_t num_query_heads, unsigned bits, std::size_t projections,
                          std::uint64_t seed, Device device, Stream stream) {
  std::vector<LayerCache> layers;
  layers.reserve(num_layers);
  for (std::size_t l = 0; l < num_layers; ++l) {
    layers.emplace_back(std::in_place_type<GqaKvCache>, 8, num_query_heads,
                        layer_config(128, bits, projections, seed, l), device, stream);
  }
  return ModelKvCache(std::move(layers));
}

}  // namespace

const LayerCache& ModelKvCache::layer(std::size_t index) const {
  detail::require_index(index, layers_.size(), "layer", "num_layers");
  return layers_[index];
}

LayerCache& ModelKvCache::layer_mut(std::size_t index) {
  detail::require_index(index, layers_.size(), "layer", "num_layers");
  return layers_[index];
}

std::size_t ModelKvCache::total_compressed_bytes() const noexcept {
  const Overloaded bytes{
      [](const GqaKvCache& cache) { return cache.heads().memory_usage(); },
      [](const SlidingWindowKvCache& cache) { return cache.cache().heads().memory_usage(); },
      [](const MlaKvCache& cache) { return cache.memory_usage(); },
      [](const LinearState& linear) { return linear.state.size() * sizeof(float); },
  };
  std::size_t total = 0;
  for (const LayerCache& layer : layers_) total += std::visit(bytes, layer);
  return total;
}

void ModelKvCache::clear() noexcept {
  const Overloaded clear_layer{
      [](GqaKvCache& cache) { cache.clear(); },
      [](SlidingWindowKvCache& cache) { cache.clear(); },
      [](MlaKvCache& cache) { cache.clear(); },
      [](LinearState& linear) { linear.state.clear(); },
  };
  for (LayerCache& layer : layers_) std::visit(clear_layer, layer);
}

ModelKvCache llama3_8b_cache(unsigned bits, std::size_t projections, std::uint64_t seed, Device device, Stream stream) {
  return llama3_cache(32, 32, bits, projections, seed, device, stream);
}

ModelKvCache llama3_70b_cache(unsigned bits, std::size_t projections, std::uint64_t seed, Device device,
                              Stream stream) {
  return llama3_cache(80, 64, bits, projections, seed, device, stream);
}

ModelKvCache gemma3_cache(std::size_t num_layers, std::size_t num_kv_heads, std::size_t num_query_heads,
                          std::size_t head_dim, unsigned bits, std::size_t projections, std::uint64_t seed,
                          Device device, Stream stream) {
  constexpr std::size_t kWindow = 1024;
  std::vector<LayerCache> layers;
  layers.reserve(num_layers);
  for (std::size_t l = 0; l < num_layers; ++l) {
    const KvCacheConfig config = layer_config(head_dim, bits, projections, seed, l);
    if ((l + 1) % 6 == 0) {
      layers.emplace_back(std::in_place_type<GqaKvCache>, num_kv_heads, num_query_heads, config, device, stream);
    } else {
      layers.emplace_back(std::in_place_type<SlidingWindowKvCache>, num_kv_heads, num_query_heads, kWindow, config,
                          device, stream);
    }
  }
  return ModelKvCache(std::move(layers));
}

ModelKvCache deepseek_v3_cache(std::size_t num_layers, unsigned bits, std::size_t projections, std::uint64_t seed,
                               Device device, Stream stream) {
  std::vector<LayerCache> layers;
  layers.reserve(num_layers);
  for (std::size_t l = 0; l < num_layers; ++l) {
    layers.emplace_back(MlaKvCache::deepseek_v3(bits, projections, seed + kLayerSeedStride * l, device, stream));
  }
  return ModelKvCache(std::move(layers));
}

}  // namespace micache
