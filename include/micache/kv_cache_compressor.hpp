// KvCacheCompressor (bitpolar's single-head compressed KV cache) and KvHeadView (one head of a larger cache).
#pragma once

#include <cstddef>
#include <vector>

#include "micache/compressed_heads.hpp"

namespace micache {

/// Read-only view of one head of a compressed cache (what bitpolar's
/// `head(i)` borrows). Valid until the cache it views is mutated or destroyed,
/// like a std::vector iterator.
class KvHeadView {
 public:
  KvHeadView(const CompressedHeads& heads, std::size_t head) noexcept : heads_(&heads), head_(head) {}

  std::size_t len() const noexcept { return heads_->len(); }
  bool is_empty() const noexcept { return heads_->is_empty(); }
  /// Pre-softmax q.k / sqrt(head_dim) per stored key (bitpolar's function; its doc
  /// comment's "softmax" is not applied). Errors: DimensionMismatch, NonFiniteInput
  /// (also on an empty cache, where bitpolar skips the check).
  std::vector<float> attention_scores(const std::vector<float>& query) const;
  /// Reconstructed keys / values, `len()` vectors of head_dim floats, oldest first.
  std::vector<std::vector<float>> decode_keys() const;
  std::vector<std::vector<float>> decode_values() const;
  /// f32 bytes of this head's keys and values over the bytes their records hold (1.0 when empty).
  double compression_ratio() const noexcept { return heads_->compression_ratio(); }

 private:
  const CompressedHeads* heads_;
  std::size_t head_;
};

/// bitpolar's `KvCacheCompressor`: one head's compressed keys and values.
///
/// Keys and values get independent quantisers (bitpolar shares one); records
/// are bit-packed in memory (76 + 68 bytes per token at head_dim 128, 4 bits,
/// 32 projections, against bitpolar's 790). See CompressedHeads for the
/// algorithm, memory and errors; `heads()` gives the device-tensor forms.
class KvCacheCompressor : public CompressedCacheBase {
 public:
  /// A cache on `device` working on `stream` (see CompressedHeads).
  /// Errors: the config's (KvCacheConfig::validate).
  explicit KvCacheCompressor(const KvCacheConfig& config, Device device = Device::cpu(), Stream stream = {})
      : CompressedCacheBase(1, config, device, stream, "KvCacheCompressor") {}

  /// Appends one key and one value (head_dim floats each). Both are checked
  /// before either is stored. Errors: DimensionMismatch, NonFiniteInput.
  void push(const std::vector<float>& key, const std::vector<float>& value) { heads_.push_token({key}, {value}); }
  /// See KvHeadView::attention_scores.
  std::vector<float> attention_scores(const std::vector<float>& query) const { return view().attention_scores(query); }
  /// softmax(scores) . V: head_dim floats (bitpolar has no attention output).
  /// Errors: as attention_scores, and EmptyInput on an empty cache.
  std::vector<float> attention_output(const std::vector<float>& query) const {
    return heads_.attention_outputs({query}).front();
  }
  std::vector<std::vector<float>> decode_keys() const { return view().decode_keys(); }
  std::vector<std::vector<float>> decode_values() const { return view().decode_values(); }
  /// Keeps the last `window` keys and values. O(1).
  void evict_outside_window(std::size_t window) noexcept { heads_.keep_last(window); }
  /// Reads a file written by `save` (CompressedCacheBase::save) onto `device`,
  /// into a cache working on `stream`. Errors: Io (malformed file, a file of
  /// another class, a record format or size that does not match the config).
  static KvCacheCompressor load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

 private:
  KvHeadView view() const noexcept { return KvHeadView(heads_, 0); }
};

}  // namespace micache
