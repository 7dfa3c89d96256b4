// CompressedHeads: the device-resident store of compressed keys and values behind every compressed KV cache.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>

#include "micache/device.hpp"
#include "micache/kv_cache_config.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache {

struct RecordRing;
struct RecordQuery;
namespace detail {
struct HeadTables;
}

/// Whether a CompressedHeads call scans its tensor inputs for NaN and infinity.
enum class FiniteCheck {
  /// Scan on the device (one synchronisation per tensor); NonFiniteInput names the first bad element.
  Scan,
  /// No scan: for inputs the caller has checked already (the bitpolar-style
  /// caches check host vectors on the host before they upload them). A
  /// non-finite element then gives unspecified records or results.
  Skip,
};

/// Keys and values of `num_heads` attention heads, compressed to a few bits
/// per coordinate, on one device, with a device-tensor API. MultiHeadKvCache,
/// GqaKvCache, SlidingWindowKvCache and KvCacheCompressor (one head) are thin
/// layers over it that add bitpolar's host-vector API.
///
/// Compression (TurboQuant-style, data-oblivious, online): each vector is
/// rotated by a seeded randomised Hadamard transform (two rounds, O(d log d);
/// head_dim is zero-padded to the next power of two p), every rotated
/// coordinate of the unit vector is quantised by a Lloyd-Max codebook for the
/// coordinate distribution of a random rotation, and the codes are bit-packed
/// beside the vector's norm. Keys also keep a 1-bit QJL sketch of the residual
/// (`projections` sign bits and the residual's norm), which gives bitpolar's
/// unbiased inner-product estimator (ScoreEstimator::Qjl). Every head, and
/// keys and values separately, get independent rotations and QJL matrices
/// from (seed, head, kind). Record format: detail::RecordLayout.
///
/// Memory per token: num_heads * (key_record_bytes + value_record_bytes). At
/// head_dim 128, 4 bits, 32 projections that is 76 + 68 = 144 bytes per head
/// (f32: 1024, bf16: 512; bitpolar holds 790). Storage is a ring per kind,
/// `[num_heads, capacity, record_bytes]`, growing to max(needed, 2 * capacity,
/// 16) tokens; `keep_last` moves the ring start (no bytes move). Fixed per
/// head: the rotation signs and, for keys, the m x p QJL matrix (16 KiB at
/// p 128, m 32; bitpolar: 80 KiB), counted by `table_bytes`.
///
/// Scores: each query is rotated (and for Qjl projected) once per call; every
/// key then costs O(p) code lookups. `scores` and `attention_output` are one
/// backend call over every head and token (one kernel launch on CUDA).
///
/// Errors (`Error` codes): DimensionMismatch (wrong head count or vector
/// length, naming the argument), NonFiniteInput (NaN or infinity in keys,
/// values or queries, naming the index, head and argument), Shape (tensor
/// rank), Config (dtype, device), Hook (head out of range), EmptyInput
/// (attention over an empty cache), OutOfMemory, the config's errors at
/// construction. A push validates every head before it writes anything: on
/// error no head changes.
///
/// Stream: tables, records and results are allocated, and every kernel runs,
/// on the stream given at construction (null by default; it must belong to
/// `device`). Tensors passed in must be ready in that stream's order. The
/// finiteness scans of tensor inputs and every host result wait for it.
///
/// Thread safety: const members may run concurrently; mutation needs exclusive access.
class CompressedHeads {
 public:
  /// Errors: EmptyInput (`empty input: num_heads must be > 0`), the config's (KvCacheConfig::validate).
  CompressedHeads(std::size_t num_heads, const KvCacheConfig& config, Device device = Device::cpu(),
                  Stream stream = {});
  /// Move-only: a copy would share the storage that pushes write in place,
  /// so two copies would overwrite each other's tokens. Move, or save and load.
  CompressedHeads(const CompressedHeads&) = delete;
  CompressedHeads& operator=(const CompressedHeads&) = delete;
  CompressedHeads(CompressedHeads&&) noexcept = default;
  CompressedHeads& operator=(CompressedHeads&&) noexcept = default;

  std::size_t num_heads() const noexcept { return num_heads_; }
  const KvCacheConfig& config() const noexcept { return config_; }
  Device device() const noexcept { return device_; }
  /// The stream the store allocates and works on.
  Stream stream() const noexcept { return stream_; }
  /// Tokens held (every head holds the same number).
  std::size_t len() const noexcept { return length_; }
  bool is_empty() const noexcept { return length_ == 0; }

  /// Appends tokens already on the device: `keys` and `values` F32/F16/BF16,
  /// `[num_heads, head_dim]` (one token) or `[num_heads, tokens, head_dim]`
  /// (prefill), same shape. One encode call per kind for every head and token.
  /// With FiniteCheck::Scan the finiteness scan synchronises once per tensor.
  void push(const Tensor& keys, const Tensor& values, FiniteCheck check = FiniteCheck::Scan);

  /// Makes room for `tokens` tokens without growing again. Error: OutOfMemory (unchanged).
  void reserve(std::size_t tokens);

  /// Pre-softmax scores q.k / sqrt(head_dim) of every query against every
  /// token: `queries` F32/F16/BF16 `[num_query_heads, head_dim]`
  /// (num_query_heads = num_heads * group_size; query head q reads head
  /// q / group_size) on the cache's device; result F32 `[num_query_heads,
  /// len()]` there. Error: Config when group_size is 0.
  Tensor scores(const Tensor& queries, std::size_t group_size = 1, FiniteCheck check = FiniteCheck::Scan) const;

  /// softmax(scores) . V per query head: F32 `[num_query_heads, head_dim]`.
  /// Values are decoded in the rotated domain and rotated back once per head.
  /// Error: EmptyInput when the cache is empty.
  Tensor attention_output(const Tensor& queries, std::size_t group_size = 1,
                          FiniteCheck check = FiniteCheck::Scan) const;

  /// Scores of head `head`'s keys against one query `[1, head_dim]`: F32 `[1,
  /// len()]`, the row `scores` gives that head. Error: Hook for head out of range.
  Tensor head_scores(std::size_t head, const Tensor& query, FiniteCheck check = FiniteCheck::Scan) const;

  /// Reconstructed keys / values, F32 `[num_heads, len(), head_dim]` on the device.
  Tensor decode_keys() const;
  Tensor decode_values() const;
  /// One head's reconstructed keys / values, F32 `[len(), head_dim]`. Error: Hook for head out of range.
  Tensor decode_keys(std::size_t head) const;
  Tensor decode_values(std::size_t head) const;

  /// The records of the tokens held, oldest first: U8 `[num_heads, len(),
  /// key_record_bytes()]` and `[num_heads, len(), value_record_bytes()]`, new
  /// tensors on the cache's device (detail::RecordLayout gives the format).
  std::pair<Tensor, Tensor> records() const;
  /// Replaces every token with records as `records()` gives them (U8 on this
  /// cache's device, the same token count in both). The bytes are taken as
  /// they are: records written under another config decode to other numbers.
  /// Errors: Shape (dims), Config (dtype, device), OutOfMemory; unchanged on error.
  void assign_records(const Tensor& key_records, const Tensor& value_records);

  /// Keeps the last `window` tokens of every head (keys and values). O(1).
  void keep_last(std::size_t window) noexcept;
  /// Drops every token and releases the records (the tables stay).
  void clear() noexcept;

  std::size_t key_record_bytes() const noexcept;
  std::size_t value_record_bytes() const noexcept;
  /// Bytes of the records of the tokens held: len * num_heads * (key + value record bytes).
  std::size_t memory_usage() const noexcept;
  /// Bytes the record rings hold, spare capacity included.
  std::size_t memory_reserved() const noexcept;
  /// Bytes of the fixed per-head tables on the device (rotations, QJL matrices, codebooks).
  std::size_t table_bytes() const noexcept;
  /// f32 bytes of the keys and values held (2 * len * num_heads * head_dim * 4)
  /// over memory_usage(); 1.0 when empty (as bitpolar).
  double compression_ratio() const noexcept;

 private:
  void validate_queries(const Tensor& queries, const char* what, std::size_t rows, std::size_t first_head,
                        FiniteCheck check) const;
  Tensor run_scores(const RecordQuery& query) const;
  Tensor run_attention(const RecordQuery& query) const;
  std::size_t capacity() const noexcept;
  std::pair<Tensor, Tensor> resized_rings(std::size_t capacity) const;
  Tensor decoded(const RecordRing& ring) const;
  RecordRing key_ring() const;
  RecordRing value_ring() const;
  RecordQuery query_of(const Tensor& queries, std::size_t group_size) const;
  void append_encoded(const Tensor& keys, const Tensor& values, std::size_t tokens);

  std::size_t num_heads_;
  KvCacheConfig config_;
  Device device_;
  Stream stream_;
  std::shared_ptr<const detail::HeadTables> tables_;
  Tensor key_records_;    // U8 [num_heads, capacity, key_record_bytes], undefined when nothing is held
  Tensor value_records_;  // U8 [num_heads, capacity, value_record_bytes]
  std::size_t start_ = 0;
  std::size_t length_ = 0;
};

}  // namespace micache
