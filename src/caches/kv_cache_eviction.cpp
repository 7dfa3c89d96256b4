// KVCache's trims and evictions: validate, ask the policy (eviction.hpp) which
// tokens to keep, compact every layer into a new vector of layers, commit.
#include <fmt/format.h>

#include <climits>
#include <cstdint>
#include <utility>

#include "micache/error.hpp"
#include "micache/eviction.hpp"
#include "micache/kv_cache.hpp"
#include "src/caches/kv_cache_rings.hpp"
#include "src/caches/score_ranking.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

using detail::copy_kv;
using detail::ring_buffer;

}  // namespace

std::size_t KVCache::common_length(const char* operation) const {
  const Layer* first = first_populated();
  if (first == nullptr) return 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    if (layer.populated() && layer.length != first->length) {
      throw Error(ErrorCode::Shape,
                  fmt::format("{}: layer {} holds {} tokens, the first populated layer {}; finish the step first",
                              operation, i, layer.length, first->length));
    }
  }
  return first->length;
}

// `layer` keeping only the tokens `kept` names (indices below its length). A
// suffix moves the ring's start; anything else is copied into new buffers of
// the same capacity, one launch per range (Gather::ByRange) or one launch from
// an index list uploaded to the device (Gather::ByIndexList). `layer` is not changed.
KVCache::Layer KVCache::compacted(const Layer& layer, const KeptTokens& kept, Gather gather) const {
  Layer next = layer;
  next.positions = layer.positions.select(kept.ranges());
  next.length = kept.size();
  if (kept.is_suffix_of(layer.length)) {
    const std::size_t dropped = layer.length - kept.size();
    next.start = layer.capacity() == 0 ? 0 : (layer.start + dropped) % layer.capacity();
    return next;
  }
  next.start = 0;
  if (gather == Gather::ByRange) {
    next.keys = ring_buffer(layer.keys, layer.capacity(), stream_);
    next.values = ring_buffer(layer.values, layer.capacity(), stream_);
    std::size_t slot = 0;
    for (const PositionRuns::Run& range : kept.ranges().runs()) {
      copy_kv(layer.keys, layer.values, next.keys, next.values,
              {.src_start = (layer.start + range.begin) % layer.capacity(), .dst_start = slot, .tokens = range.length});
      slot += range.length;
    }
    return next;
  }
  const Tensor list = Tensor::from_host_i32(kept.indices(), {kept.size()}, layer.keys.device(), stream_);
  next.keys = ring_buffer(layer.keys, layer.capacity(), stream_);
  next.values = ring_buffer(layer.values, layer.capacity(), stream_);
  copy_kv(
      layer.keys, layer.values, next.keys, next.values,
      {.src_start = layer.start, .tokens = next.length, .src_tokens = static_cast<const std::int32_t*>(list.data())});
  return next;
}

// Compacts every populated layer l to `kept[l]` (see compacted) into a new
// vector of layers, then commits it: a throw (OutOfMemory) leaves the cache as it was.
void KVCache::keep_in_every_layer(const std::vector<KeptTokens>& kept, Gather gather) {
  std::vector<Layer> next = layers_;
  for (std::size_t l = 0; l < next.size(); ++l) {
    if (next[l].populated()) next[l] = compacted(layers_[l], kept[l], gather);
  }
  layers_ = std::move(next);
}

bool KVCache::trim_to(std::size_t max_seq_len) {
  const std::size_t length = common_length("trim_to");
  const KeptTokens kept = eviction::last(length, max_seq_len);
  if (kept.size() == length) return false;
  keep_in_every_layer(std::vector<KeptTokens>(layers_.size(), kept), Gather::ByRange);  // a suffix: moves no byte
  return true;
}

bool KVCache::enforce_memory_limit(std::size_t max_bytes, EvictionPolicy policy) {
  const std::size_t current = memory_usage();
  if (current <= max_bytes) return false;
  const std::size_t length = common_length("enforce_memory_limit");
  const KeptTokens kept = eviction::for_budget(policy, length, current / length, max_bytes);
  if (kept.size() == length) return false;
  keep_in_every_layer(std::vector<KeptTokens>(layers_.size(), kept), Gather::ByRange);  // a suffix: moves no byte
  return true;
}

bool KVCache::evict_to_window(std::size_t sinks, std::size_t window) {
  const std::size_t length = common_length("evict_to_window");
  const KeptTokens kept = eviction::sinks_and_window(length, sinks, window);
  if (kept.size() == length) return false;
  keep_in_every_layer(std::vector<KeptTokens>(layers_.size(), kept), Gather::ByRange);  // two ranges: two launches
  return true;
}

bool KVCache::evict_heavy_hitters(const Tensor& scores, std::size_t heavy, std::size_t window) {
  const std::size_t length = common_length("evict_heavy_hitters");
  detail::require_defined(scores, "evict_heavy_hitters: scores");
  const bool shape_ok = (scores.rank() == 1 && scores.dim(0) == length) ||
                        (scores.rank() == 2 && scores.dim(0) == layers_.size() && scores.dim(1) == length);
  if (!shape_ok) {
    throw Error(ErrorCode::Shape, fmt::format("evict_heavy_hitters: scores must be [{}] or [{}, {}], got {}", length,
                                              layers_.size(), length, scores.shape().to_string()));
  }
  detail::require_float_dtype(scores.dtype(), "evict_heavy_hitters: scores");
  if (!eviction::heavy_hitters_evict(length, heavy, window)) return false;
  detail::require_device(scores.device(), first_populated()->keys.device(), "evict_heavy_hitters: scores");
  if (length > static_cast<std::size_t>(INT32_MAX)) {
    throw Error(ErrorCode::Shape, fmt::format("evict_heavy_hitters: {} tokens exceed the int32 index range", length));
  }
  const std::vector<std::vector<std::int32_t>> chosen = detail::top_scored(scores, length - window, heavy, stream_);
  std::vector<KeptTokens> kept(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (layers_[l].populated()) {
      kept[l] = eviction::heavy_hitters(length, heavy, window, chosen[scores.rank() == 2 ? l : 0]);
    }
  }
  keep_in_every_layer(kept, Gather::ByIndexList);  // one launch per layer, whatever the ranking chose
  return true;
}

}  // namespace micache
