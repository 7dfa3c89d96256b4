// GqaKvCache and SlidingWindowKvCache: bitpolar 0.3.4's grouped-query and windowed compressed KV caches.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "micache/kv_cache_compressor.hpp"

namespace micache {

/// bitpolar's `GqaKvCache`: `num_kv_heads` compressed heads read by
/// `num_query_heads` queries; query head q reads kv head q / group_size.
/// `compression_ratio()` is over the whole cache (bitpolar averages the
/// per-head ratios: the same number, as every head holds the same tokens).
class GqaKvCache : public CompressedCacheBase {
 public:
  /// Errors: EmptyInput (`empty input: num_kv_heads must be > 0`, then
  /// `... num_query_heads ...`); DimensionMismatch{expected: num_kv_heads,
  /// actual: num_query_heads % num_kv_heads} when the counts do not divide (as
  /// bitpolar, with the counts named in the message); the config's. The
  /// cache works on `stream` (see CompressedHeads).
  GqaKvCache(std::size_t num_kv_heads, std::size_t num_query_heads, const KvCacheConfig& config,
             Device device = Device::cpu(), Stream stream = {});

  /// Llama 3 8B's grouping (8 kv heads, 32 query heads) and 70B's (8, 64).
  static GqaKvCache llama3_8b(const KvCacheConfig& config, Device device = Device::cpu(), Stream stream = {}) {
    return GqaKvCache(8, 32, config, device, stream);
  }
  static GqaKvCache llama3_70b(const KvCacheConfig& config, Device device = Device::cpu(), Stream stream = {}) {
    return GqaKvCache(8, 64, config, device, stream);
  }

  /// Appends one token: num_kv_heads keys and values. Atomic across heads.
  void push_token(const std::vector<std::vector<float>>& keys, const std::vector<std::vector<float>>& values) {
    push_host(keys, values);
  }
  /// num_query_heads queries -> `[num_query_heads][len]` pre-softmax scores.
  std::vector<std::vector<float>> attention_scores(const std::vector<std::vector<float>>& queries) const {
    return scores_host(queries, group_size_);
  }
  /// softmax(scores) . V per query head. Error: EmptyInput when empty.
  std::vector<std::vector<float>> attention_output(const std::vector<std::vector<float>>& queries) const {
    return outputs_host(queries, group_size_);
  }
  std::size_t num_kv_heads() const noexcept { return heads().num_heads(); }
  std::size_t num_query_heads() const noexcept { return heads().num_heads() * group_size_; }
  std::size_t group_size() const noexcept { return group_size_; }
  /// Writes as KvCacheCompressor::save, plus metadata `micache.num_query_heads`.
  void save(const std::string& path) const;
  /// Reads a file written by `save` onto `device`, into a cache working on
  /// `stream`. Errors: as KvCacheCompressor::load.
  static GqaKvCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});
  std::optional<KvHeadView> kv_head(std::size_t index) const {
    return index < num_kv_heads() ? std::optional<KvHeadView>(KvHeadView(heads(), index)) : std::nullopt;
  }

 private:
  std::size_t group_size_;
};

/// bitpolar's `SlidingWindowKvCache`: a GqaKvCache that keeps the last
/// `window_size` tokens. Eviction moves the ring start (O(1), no bytes move).
/// The GqaKvCache is a private base: `cache()` reads it, and only
/// `push_token` (which evicts) and the loader's `restore` change it.
class SlidingWindowKvCache : private GqaKvCache {
 public:
  /// Errors: EmptyInput (`empty input: window_size must be > 0`), GqaKvCache's.
  SlidingWindowKvCache(std::size_t num_kv_heads, std::size_t num_query_heads, std::size_t window_size,
                       const KvCacheConfig& config, Device device = Device::cpu(), Stream stream = {});

  /// Appends one token, then drops the oldest while more than window_size are held.
  void push_token(const std::vector<std::vector<float>>& keys, const std::vector<std::vector<float>>& values);
  /// As GqaKvCache's, over the tokens in the window.
  using GqaKvCache::attention_output;
  using GqaKvCache::attention_scores;
  /// Tokens held (at most window_size).
  std::size_t window_len() const noexcept { return len(); }
  /// Tokens pushed since construction or the last clear.
  std::size_t total_tokens_seen() const noexcept { return total_tokens_seen_; }
  std::size_t window_size() const noexcept { return window_size_; }
  using GqaKvCache::is_empty;
  /// Empties the window and resets total_tokens_seen.
  void clear() noexcept {
    GqaKvCache::clear();
    total_tokens_seen_ = 0;
  }
  const GqaKvCache& cache() const noexcept { return *this; }
  /// Writes as GqaKvCache::save, plus metadata `micache.window_size` and `micache.total_tokens_seen`.
  void save(const std::string& path) const;
  /// Reads a file written by `save` onto `device`, into a cache working on
  /// `stream`. Errors: as KvCacheCompressor::load.
  static SlidingWindowKvCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

  /// The loader's restore hook: replaces the window with `key_records` and
  /// `value_records` (as CompressedHeads::assign_records takes them) and sets
  /// total_tokens_seen, as a saved file holds them. Errors: Shape (`5 tokens
  /// held, window 4, 5 seen` when the records hold more than window_size
  /// tokens or more than total_tokens_seen), those of assign_records; unchanged on error.
  void restore(const Tensor& key_records, const Tensor& value_records, std::size_t total_tokens_seen);

 private:
  std::size_t window_size_;
  std::size_t total_tokens_seen_ = 0;
};

}  // namespace micache
