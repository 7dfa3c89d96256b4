// ModelKvCache: bitpolar 0.3.4's per-layer compressed caches of a whole model, and builders for known models.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <variant>
#include <vector>

#include "micache/gqa_kv_cache.hpp"
#include "micache/mla_kv_cache.hpp"

namespace micache {

/// A linear-attention layer's recurrent state, kept as it is (bitpolar's
/// `LayerCache::Linear{state, state_dim}`): not compressed.
struct LinearState {
  std::vector<float> state;
  std::size_t state_dim = 0;
};

/// One layer's cache (bitpolar's `LayerCache` enum): full attention
/// (Global), sliding-window attention (Window), multi-head latent attention
/// (Latent) or linear attention (Linear), in that order of alternatives.
using LayerCache = std::variant<GqaKvCache, SlidingWindowKvCache, MlaKvCache, LinearState>;

/// Which alternative a LayerCache holds; the value is its variant index.
enum class LayerKind { Global = 0, Window = 1, Latent = 2, Linear = 3 };

/// bitpolar's `ModelKvCache`: one LayerCache per transformer layer, for
/// models that mix attention kinds (Gemma 3's windows, DeepSeek's latents,
/// linear layers).
///
/// Fix over bitpolar: a layer index out of range is Error(Hook, `layer 12
/// out of range (num_layers=12)`) rather than an empty Option.
///
/// Streams: each layer works on the device and stream its cache was built
/// with (the builders give every layer theirs).
///
/// Thread safety: const members may run concurrently; mutation needs exclusive access.
class ModelKvCache {
 public:
  explicit ModelKvCache(std::vector<LayerCache> layers) noexcept : layers_(std::move(layers)) {}

  std::size_t num_layers() const noexcept { return layers_.size(); }
  /// Layer `index`. Error: Hook when index >= num_layers().
  const LayerCache& layer(std::size_t index) const;
  LayerCache& layer_mut(std::size_t index);
  /// Which kind layer `index` is. Error: Hook when index >= num_layers().
  LayerKind kind(std::size_t index) const { return static_cast<LayerKind>(layer(index).index()); }

  /// Bytes of what every layer holds for its tokens, summed: Global
  /// `heads().memory_usage()` (len * num_kv_heads * (key + value record
  /// bytes)), Window the same over the tokens in its window, Latent
  /// `memory_usage()` (len * record bytes), Linear 4 bytes per float of
  /// `state`. Spare ring capacity and the fixed tables are not counted
  /// (bitpolar counts the same: its codes' in-memory sizes). O(num_layers).
  std::size_t total_compressed_bytes() const noexcept;
  /// Empties every layer: the caches drop their tokens (a window also resets
  /// total_tokens_seen), a Linear state is emptied (its state_dim stays), as bitpolar.
  void clear() noexcept;

 private:
  std::vector<LayerCache> layers_;
};

/// Builders. Layer l of each model gets seed `seed + 100 l` (as bitpolar);
/// within a layer every head's keys and values have independent randomness,
/// so no two heads of the model share a rotation. Every layer builds its
/// tables at construction: per kv head about 16 KiB of QJL matrix at
/// head_dim 128 and 32 projections (bitpolar: 80 KiB), so llama3_70b_cache's
/// 640 kv heads hold about 10 MiB. Errors: the config's, GqaKvCache's.

/// Llama 3 8B: 32 Global layers, GQA 8 kv / 32 query heads, head_dim 128.
ModelKvCache llama3_8b_cache(unsigned bits, std::size_t projections, std::uint64_t seed, Device device = Device::cpu(),
                             Stream stream = {});
/// Llama 3 70B: 80 Global layers, GQA 8 kv / 64 query heads, head_dim 128.
ModelKvCache llama3_70b_cache(unsigned bits, std::size_t projections, std::uint64_t seed, Device device = Device::cpu(),
                              Stream stream = {});
/// Gemma 3: layer l is Global when (l + 1) % 6 == 0, otherwise Window with window 1024.
ModelKvCache gemma3_cache(std::size_t num_layers, std::size_t num_kv_heads, std::size_t num_query_heads,
                          std::size_t head_dim, unsigned bits, std::size_t projections, std::uint64_t seed,
                          Device device = Device::cpu(), Stream stream = {});
/// DeepSeek V3: `num_layers` Latent layers of latent_dim 512.
ModelKvCache deepseek_v3_cache(std::size_t num_layers, unsigned bits, std::size_t projections, std::uint64_t seed,
                               Device device = Device::cpu(), Stream stream = {});

}  // namespace micache
