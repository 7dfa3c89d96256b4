// PagedKvConfig: the settings of a PagedKvCache, its byte counts and the sizes of its device page tables.
#pragma once

#include <cstddef>
#include <vector>

#include "micache/backend/paged_kv.hpp"
#include "micache/dtype.hpp"

namespace micache {

/// What one layer of a PagedKvCache attends to, for a query at token index q:
/// - full attention (`window` 0): every token;
/// - a sliding window (`window` w >= 1, `sinks` 0): tokens q - w + 1 .. q,
///   the w most recent, its own included (FlashInfer's window_left = w - 1;
///   Mistral, Gemma 2 and 3, gpt-oss);
/// - sinks and a window (`sinks` s >= 1): the first s tokens and the window
///   (StreamingLLM).
/// A window layer's pages whose tokens no later query of a sequence attends
/// go back to the pool (PagedKvCache::begin_step).
struct PagedLayerKind {
  std::size_t window = 0;  ///< 0: full attention; else the tokens of the window
  std::size_t sinks = 0;   ///< with a window, the first tokens kept too; 0 for full attention

  static constexpr PagedLayerKind full() noexcept { return {}; }
  static constexpr PagedLayerKind sliding(std::size_t window) noexcept { return {window, 0}; }
  static constexpr PagedLayerKind sinks_and_window(std::size_t sinks, std::size_t window) noexcept {
    return {window, sinks};
  }
  constexpr bool is_full() const noexcept { return window == 0; }
  friend constexpr bool operator==(const PagedLayerKind&, const PagedLayerKind&) = default;
};

/// How a PagedKvCache groups its layers (vLLM's hybrid allocator): layers of
/// one kind form groups of `group_size` layers each (the smallest count of
/// layers of one kind; a kind's last group may hold fewer), in layer order,
/// kind by kind in order of first appearance. A group's layers share page
/// ids and page tables: page p of group G is page p of storage tensors 0 ..
/// (layers of G) - 1. One group (every layer full) is the plain cache:
/// group_size = n_layers.
struct PagedLayerGroups {
  std::size_t group_size = 0;               ///< layers per group (storage tensors of the cache)
  std::vector<std::size_t> layer_group;     ///< per layer: its group
  std::vector<std::size_t> layer_slot;      ///< per layer: its storage tensor, its index in its group
  std::vector<PagedLayerKind> group_kinds;  ///< per group: its layers' kind

  std::size_t groups() const noexcept { return group_kinds.size(); }
  /// Whether some group has a window (then the pool keeps a null page).
  bool has_windows() const noexcept;
};

/// Settings of a PagedKvCache. Set exactly one of `num_pages` and `max_bytes`.
///
/// A page id names the same page in every layer of its group (see
/// PagedLayerGroups; every layer when all are full), so one page costs
/// `page_bytes()` = page_size x `slot_bytes()`: a token's keys and values in
/// group_size layers.
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
  /// (pool_pages() x page_size), at most kDefaultMaxSequenceLen.
  std::size_t max_sequence_len = 0;
  /// Per layer, what it attends to; empty: every layer full attention.
  std::vector<PagedLayerKind> layer_kinds = {};

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
  /// - `PagedKvConfig.layer_kinds has 3 entries for 4 layers`; `PagedKvConfig.layer_kinds[2] has 4 sinks
  ///   and no window` (sinks need a window);
  /// - `PagedKvConfig: a cache with window layers needs 2 pages or more (one is the null page), got 1`;
  /// - the overflow error of `table_bytes`.
  void validate() const;

  /// The layer groups `layer_kinds` makes (no validation; every layer full when empty).
  /// O(n_layers x kinds).
  PagedLayerGroups layer_groups() const;
  /// The kind of `layer` (full when layer_kinds is empty). O(1).
  /// Error: Hook `layer 4 out of range (layers=4)`.
  PagedLayerKind kind_of(std::size_t layer) const;

  /// Bytes of one token's keys and values over every layer:
  /// 2 x n_layers x kv_heads x head_dim x dtype size. Error: Config when that overflows size_t.
  std::size_t bytes_per_token() const;
  /// Bytes of one token's keys and values in one page, over a group's
  /// storage tensors: 2 x group_size x kv_heads x head_dim x dtype size
  /// (bytes_per_token() with one group). Error: Config on overflow.
  std::size_t slot_bytes() const;
  /// Bytes of one page: page_size x slot_bytes(). Error: Config on overflow.
  std::size_t page_bytes() const;
  /// Bytes of one page in one storage tensor (one layer's share):
  /// 2 x page_size x kv_heads x head_dim x dtype size = page_bytes() / group_size.
  /// O(1), no validation: it cannot overflow once page_bytes() does not.
  std::size_t storage_page_bytes() const noexcept;
  /// Pages of the pool: `num_pages`, or `max_bytes / page_bytes()` when num_pages is 0 (no validation).
  /// With window layers the last of them is the null page (see pool_pages).
  std::size_t pages() const;
  /// Pages sequences can hold: pages(), less the null page when some layer
  /// has a window (the page a window layer's table names for tokens it no
  /// longer holds; never handed out, never read by the cache's kernels).
  std::size_t pool_pages() const;
  /// Bytes of the whole pool: pages() x page_bytes(). Error: Config on overflow.
  std::size_t reserved_bytes() const;
  /// The most tokens one sequence may hold: max_sequence_len, or its default.
  std::size_t sequence_len() const;
  /// Columns of a page-table row: ceil(sequence_len() / page_size), the most pages one sequence may hold.
  std::size_t row_capacity() const;
  /// Bytes of the device page tables: groups x max_sequences x (row_capacity() + 1)
  /// x 4 (each row's page ids and its length; 1024 x 8193 x 4 = 32 MiB per group at the
  /// defaults with page 16 and a pool of at least 2^17 slots). Error: Config on overflow.
  std::size_t table_bytes() const;
};

}  // namespace micache
