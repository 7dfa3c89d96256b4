// The bitpolar-style compressed caches' shared layer (CompressedCacheBase, KvHeadView) and KvCacheCompressor.
#pragma once

#include <cstddef>
#include <string>
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
  /// comment's "softmax" is not applied). Errors: Hook (head out of range),
  /// DimensionMismatch, NonFiniteInput (also on an empty cache, where bitpolar skips the check).
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

/// What every bitpolar-style compressed cache shares: a CompressedHeads
/// store, the accessors that read it, and bitpolar's host-vector forms. Base
/// of KvCacheCompressor, MultiHeadKvCache and GqaKvCache (and, through
/// GqaKvCache, of SlidingWindowKvCache).
///
/// The host-vector forms check every vector on the host first, with
/// bitpolar's errors: DimensionMismatch{expected, actual} naming the argument
/// (`keys: one vector per head`) or the head whose vector has the wrong
/// length (`keys of head 1`), NonFiniteInput naming the index and head. Then
/// each argument is one host-to-device copy, and the store skips its device
/// finiteness scan (FiniteCheck::Skip); host results are one copy back.
class CompressedCacheBase {
 public:
  /// Tokens held.
  std::size_t len() const noexcept { return heads_.len(); }
  bool is_empty() const noexcept { return heads_.is_empty(); }
  /// f32 bytes of the keys and values held over the bytes their records hold; 1.0 when empty.
  double compression_ratio() const noexcept { return heads_.compression_ratio(); }
  void clear() noexcept { heads_.clear(); }

  /// The store: device-tensor `push`, `scores`, `attention_output`, records, memory figures.
  CompressedHeads& heads() noexcept { return heads_; }
  const CompressedHeads& heads() const noexcept { return heads_; }

 protected:
  CompressedCacheBase(std::size_t num_heads, const KvCacheConfig& config, Device device, Stream stream)
      : heads_(num_heads, config, device, stream) {}

  /// Appends one token: `keys[h]` and `values[h]`, head_dim floats each, for
  /// every head h. Both are checked before either is stored.
  void push_host(const std::vector<std::vector<float>>& keys, const std::vector<std::vector<float>>& values);
  /// Pre-softmax scores of `queries` (num_heads * group_size vectors of
  /// head_dim floats; query q reads head q / group_size): `[queries][len]`.
  std::vector<std::vector<float>> scores_host(const std::vector<std::vector<float>>& queries,
                                              std::size_t group_size) const;
  /// softmax(scores) . V per query: `[queries][head_dim]`. Error: EmptyInput when empty.
  std::vector<std::vector<float>> outputs_host(const std::vector<std::vector<float>>& queries,
                                               std::size_t group_size) const;

 private:
  CompressedHeads heads_;
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
      : CompressedCacheBase(1, config, device, stream) {}

  /// Appends one key and one value (head_dim floats each). Both are checked
  /// before either is stored. Errors: DimensionMismatch, NonFiniteInput.
  void push(const std::vector<float>& key, const std::vector<float>& value) { push_host({key}, {value}); }
  /// See KvHeadView::attention_scores.
  std::vector<float> attention_scores(const std::vector<float>& query) const { return view().attention_scores(query); }
  /// softmax(scores) . V: head_dim floats (bitpolar has no attention output).
  /// Errors: as attention_scores, and EmptyInput on an empty cache.
  std::vector<float> attention_output(const std::vector<float>& query) const {
    return outputs_host({query}, 1).front();
  }
  std::vector<std::vector<float>> decode_keys() const { return view().decode_keys(); }
  std::vector<std::vector<float>> decode_values() const { return view().decode_values(); }
  /// Keeps the last `window` keys and values. O(1).
  void evict_outside_window(std::size_t window) noexcept { heads().keep_last(window); }

  /// Writes the records and config to the safetensors file `path`: tensors
  /// `key_records` and `value_records` (U8, as CompressedHeads::records gives
  /// them); metadata `micache.cache` (the class name), `micache.config` (the
  /// KvCacheConfig as JSON), `micache.num_heads`, `micache.quantizer` (the
  /// record format's version). Every compressed cache writes this format,
  /// with its own settings added. Error: Io (an earlier file at `path` is left as it was).
  void save(const std::string& path) const;
  /// Reads a file written by `save` onto `device`, into a cache working on
  /// `stream`. Errors: Io (malformed file, a file of another class, a record
  /// format or size that does not match the config).
  static KvCacheCompressor load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

 private:
  KvHeadView view() const noexcept { return KvHeadView(heads(), 0); }
};

}  // namespace micache
