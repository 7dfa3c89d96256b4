// MultiHeadKvCache: bitpolar's multi-head compressed KV cache, with atomic pushes and fused scoring.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "micache/kv_cache_compressor.hpp"

namespace micache {

/// bitpolar's `MultiHeadKvCache`: `num_heads` compressed heads that take one
/// token at a time and answer every head's query in one call.
///
/// Fixes over bitpolar: `push_token` checks every head's key and value
/// before it writes any (bitpolar leaves heads 0..h-1 one token longer when
/// head h fails), a DimensionMismatch names the argument that is wrong
/// (bitpolar reports `keys.len()` even when `values` is wrong), and scores for
/// all heads are one backend call. Heads get independent randomness (bitpolar
/// gives head h the seed seed + h). See CompressedHeads for the rest.
class MultiHeadKvCache : public CompressedCacheBase {
 public:
  /// A cache on `device` working on `stream` (see CompressedHeads).
  /// Errors: EmptyInput (`empty input: num_heads must be > 0`), the config's.
  MultiHeadKvCache(std::size_t num_heads, const KvCacheConfig& config, Device device = Device::cpu(),
                   Stream stream = {})
      : CompressedCacheBase(num_heads, config, device, stream) {}

  /// Appends one token: exactly num_heads keys and num_heads values of head_dim
  /// floats. Errors: DimensionMismatch{expected, actual} naming `keys` or
  /// `values` (or the head whose vector has the wrong length), NonFiniteInput.
  void push_token(const std::vector<std::vector<float>>& keys, const std::vector<std::vector<float>>& values) {
    push_host(keys, values);
  }
  /// One pre-softmax score vector per head: `[num_heads][len]`.
  std::vector<std::vector<float>> attention_scores(const std::vector<std::vector<float>>& queries) const {
    return scores_host(queries, 1);
  }
  /// softmax(scores) . V per head: `[num_heads][head_dim]`. Error: EmptyInput when empty.
  std::vector<std::vector<float>> attention_output(const std::vector<std::vector<float>>& queries) const {
    return outputs_host(queries, 1);
  }
  std::size_t num_heads() const noexcept { return heads().num_heads(); }
  /// Writes as KvCacheCompressor::save.
  void save(const std::string& path) const;
  /// Reads a file written by `save` onto `device`, into a cache working on
  /// `stream`. Errors: as KvCacheCompressor::load.
  static MultiHeadKvCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});
  /// Head `index`, or nothing when out of range.
  std::optional<KvHeadView> head(std::size_t index) const {
    return index < num_heads() ? std::optional<KvHeadView>(KvHeadView(heads(), index)) : std::nullopt;
  }
};

}  // namespace micache
