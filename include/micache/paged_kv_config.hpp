// PagedKvConfig: the settings of a PagedKvCache, its byte counts and the sizes of its device page tables.
#pragma once

#include <cstddef>

#include "micache/backend/paged_kv.hpp"
#include "micache/dtype.hpp"

namespace micache {

/// Settings of a PagedKvCache. Set exactly one of `num_pages` and `max_bytes`.
///
/// A page id names the same page in every layer, so one page costs
/// `page_bytes()` = page_size x `bytes_per_token()` over all layers.
struct PagedKvConfig {
  std::size_t n_layers = 0;
  std::size_t kv_heads = 0;
  std::size_t head_dim = 0;
  std::size_t page_size = 16;  ///< tokens per page, a power of two
  std::size_t num_pages = 0;   ///< pages in the pool; 0: derived from `max_bytes`
  std::size_t max_bytes = 0;   ///< byte budget for every layer's pages: num_pages = max_bytes / page_bytes()
  DType dtype = DType::BF16;   ///< F32, F16 or BF16
  PagedLayout layout = PagedLayout::Nhd;
  /// Rows of the device page tables: the most sequences alive at once.
  std::size_t max_sequences = 1024;
  /// The most tokens one sequence may hold; 0: every slot of the pool
  /// (pages() x page_size), at most kDefaultMaxSequenceLen.
  std::size_t max_sequence_len = 0;

  /// The tokens of `max_sequence_len` when it is 0.
  static constexpr std::size_t kDefaultMaxSequenceLen = std::size_t{1} << 17;

  /// Checks every field, then the byte counts. Errors, all Config and in this order:
  /// - `PagedKvConfig.n_layers must be >= 1, got 0` (kv_heads, head_dim alike);
  /// - `PagedKvConfig.page_size must be a power of two in 1..=1073741824, got 12`;
  /// - `PagedKvConfig.dtype must be f32, f16 or bf16, got i32`; `PagedKvConfig.layout must be Nhd or Hnd, got 7`;
  /// - `PagedKvConfig: set num_pages or max_bytes, got neither` (or `got both (num_pages=8, max_bytes=4096)`);
  /// - the overflow errors of `bytes_per_token`, `page_bytes` and `reserved_bytes`;
  /// - `PagedKvConfig.max_bytes 100 is below one page (512 bytes)`;
  /// - `PagedKvConfig.num_pages must be <= 2147483647 (kv_indices are int32), got N` (also when derived);
  /// - `PagedKvConfig.max_sequences must be in 1..=2147483647, got 0`;
  /// - `PagedKvConfig.max_sequence_len must be <= 2147483647 (lengths are int32), got N`;
  /// - the overflow error of `table_bytes`.
  void validate() const;

  /// Bytes of one token's keys and values over every layer:
  /// 2 x n_layers x kv_heads x head_dim x dtype size. Error: Config when that overflows size_t.
  std::size_t bytes_per_token() const;
  /// Bytes of one page over every layer: page_size x bytes_per_token(). Error: Config on overflow.
  std::size_t page_bytes() const;
  /// Pages of the pool: `num_pages`, or `max_bytes / page_bytes()` when num_pages is 0 (no validation).
  std::size_t pages() const;
  /// Bytes of the whole pool: pages() x page_bytes(). Error: Config on overflow.
  std::size_t reserved_bytes() const;
  /// The most tokens one sequence may hold: max_sequence_len, or its default.
  std::size_t sequence_len() const;
  /// Columns of a page-table row: ceil(sequence_len() / page_size), the most pages one sequence may hold.
  std::size_t row_capacity() const;
  /// Bytes of the device page tables: max_sequences x (row_capacity() + 1)
  /// x 4 (each row's page ids and its length; 1024 x 8193 x 4 = 32 MiB at the
  /// defaults with page 16 and a pool of at least 2^17 slots). Error: Config on overflow.
  std::size_t table_bytes() const;
};

}  // namespace micache
