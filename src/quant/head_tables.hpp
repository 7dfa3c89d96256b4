// Private: the per-head quantiser tables a CompressedHeads store keeps on its device, and rings over them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/backend/compressed_records.hpp"
#include "micache/device.hpp"
#include "micache/kv_cache_config.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache::detail {

/// One kind's (keys' or values') quantiser tables for every head, on one device.
struct KindTables {
  RecordLayout layout{};
  Tensor signs;  ///< I32 [heads, sign_words]: each head's rotation sign bits, as words
  std::size_t sign_words = 0;
  Tensor centroids;    ///< F32 [2^bits], shared by every head
  Tensor boundaries;   ///< F32 [2^bits - 1]
  Tensor projections;  ///< F32 [heads, m, p], the QJL matrices; undefined for values
  float inv_alpha = 1.0f;

  /// Device bytes of the tables.
  std::size_t bytes() const noexcept;
};

/// The keys' and the values' tables of one store. Immutable once built;
/// copies of a store share them.
struct HeadTables {
  KindTables keys;
  KindTables values;

  std::size_t bytes() const noexcept { return keys.bytes() + values.bytes(); }
};

/// The tables of `heads` heads under `config` (validated) on `device`,
/// allocated on `stream`. Head h's keys use quantiser stream 2h, its values
/// 2h + 1 (VectorQuantizer); values take `config.value_bits`, or `config.bits`
/// when it is 0. Complexity: O(heads m p) on the host, one upload per table.
/// Errors: OutOfMemory (host or device), the backend's.
HeadTables make_head_tables(std::size_t heads, const KvCacheConfig& config, Device device, Stream stream);

/// Bytes of the keys' QJL matrices of `heads` heads under `config` (heads x
/// projections x padded head_dim f32), the largest table, before building
/// it. Computed in 64 bits: callers bound `heads` and the config's sizes first.
std::uint64_t projection_bytes(std::uint64_t heads, const KvCacheConfig& config) noexcept;

/// The ring descriptor over `records` (U8 `[heads, capacity, record_bytes]`,
/// or undefined when nothing is held) whose oldest token is at slot `start`.
RecordRing ring_of(const KindTables& tables, const Tensor& records, std::size_t heads, std::size_t start);

/// `ring` narrowed to its head `head` (< ring.heads), for one-head queries.
RecordRing one_head(RecordRing ring, std::size_t head) noexcept;

}  // namespace micache::detail
