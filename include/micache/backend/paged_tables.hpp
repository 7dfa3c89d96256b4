// Plain descriptions of a paged cache's device-resident page tables and of
// the work done over them on the device: a step's metadata, the accounting of
// sequences and of the pool, and moving tokens between slots (compaction).
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/backend/paged_kv.hpp"
#include "micache/host_device.hpp"

namespace micache {

/// A paged cache's page tables, resident on the device, one row per live
/// sequence (the cache assigns rows). All pointers are on the device.
/// - `block_table` int32 `[rows, row_capacity]`, row-major: row r's page ids
///   in token order; token t of row r lives in page
///   `block_table[r * row_capacity + t / page_size]` at offset t % page_size;
/// - `lengths` int32 `[rows]`: the tokens of each row.
/// Only the first pages_of(lengths[r]) columns of row r are meaningful.
struct PagedTables {
  std::int32_t* block_table = nullptr;
  std::int32_t* lengths = nullptr;
  std::size_t rows = 0;
  std::size_t row_capacity = 0;  ///< columns of a row: the most pages a sequence may hold
  std::size_t page_size = 0;     ///< tokens per page, > 0

  /// Pages holding `length` tokens: ceil(length / page_size).
  MICACHE_HOST_DEVICE constexpr std::size_t pages_of(std::size_t length) const noexcept {
    return (length + page_size - 1) / page_size;
  }
  /// Tokens in the last of those pages (FlashInfer's kv_last_page_len): 0
  /// for no tokens, else length - (pages_of(length) - 1) * page_size.
  MICACHE_HOST_DEVICE constexpr std::size_t last_page_len(std::size_t length) const noexcept {
    return length == 0 ? 0 : length - (pages_of(length) - 1) * page_size;
  }
  /// Slots of column `column` filled in a row of `length` tokens: min(page_size, length - column * page_size).
  MICACHE_HOST_DEVICE constexpr std::size_t column_fill(std::size_t length, std::size_t column) const noexcept {
    const std::size_t before = column * page_size;
    return length - before < page_size ? length - before : page_size;
  }
  /// The element of row `row`, column `column` of the block table.
  MICACHE_HOST_DEVICE std::int32_t& page(std::size_t row, std::size_t column) const noexcept {
    return block_table[row * row_capacity + column];
  }
  /// The slot (page * page_size + offset, vLLM's slot number) of token `token` of row `row`.
  MICACHE_HOST_DEVICE std::int64_t slot(std::size_t row, std::size_t token) const noexcept {
    const std::size_t column = token / page_size;
    return static_cast<std::int64_t>(page(row, column)) * static_cast<std::int64_t>(page_size) +
           static_cast<std::int64_t>(token - column * page_size);
  }
};

/// One serving step's page-table changes and metadata, built on the device
/// from the resident tables, so that only the new page ids cross from the
/// host. For each of the `batch` entries b (row r = entry_rows[b], length L
/// = entry_lengths[b] after the step, n = entry_new[b] new tokens):
/// 1. its updates k in [update_indptr[b], update_indptr[b + 1]) are applied,
///    `tables.page(r, update_cols[k]) = update_pages[k]`, and
///    `tables.lengths[r] = L`;
/// 2. then, reading the row with its updates: pages_b = pages_of(L);
///    `kv_indptr` the prefix sums of pages_b (kv_indptr[0] = 0);
///    `kv_indices[kv_indptr[b] + j] = page(r, j)` for j < pages_b;
///    `kv_last_page_len[b] = last_page_len(L)`; `qo_indptr` the prefix sums
///    of n (qo_indptr[0] = 0); `slot_mapping[qo_indptr[b] + i] = slot(r, L -
///    n + i)` for i < n.
/// Outputs are FlashInfer's paged metadata and vLLM's slot mapping, as
/// `PagedDecodeAttention` and `PagedWrite` read them. An empty batch writes
/// nothing (not even kv_indptr[0] and qo_indptr[0]).
///
/// Preconditions (the cache's; not checked): the entry rows are distinct and
/// below tables.rows; n <= L; pages_of(L) <= row_capacity; an entry's update
/// columns are distinct and below row_capacity, and cover every column the
/// step's tokens need that the row did not already hold; the sums of pages_b
/// and of n fit int32; the outputs do not overlap the tables.
///
/// Bytes moved: 12 per entry (its row, length, new tokens) plus 8 per
/// earlier entry (the offsets: 4 * batch * (batch - 1) in all, from cache),
/// 4 * (batch + 1) of update_indptr, 12 per update (column and page read,
/// page written), 4 per row length written, 8 per listed page (read,
/// written), 12 per new token (page read, slot written), and 12 * batch + 8
/// of indptr and last-page lengths written.
struct PagedStepBuild {
  PagedTables tables;                           ///< updated in place
  std::size_t batch = 0;                        ///< entries
  const std::int32_t* entry_rows = nullptr;     ///< `[batch]`, distinct rows
  const std::int32_t* entry_lengths = nullptr;  ///< `[batch]`, each row's length after the step
  const std::int32_t* entry_new = nullptr;      ///< `[batch]`, new tokens of each entry, <= its length
  const std::int32_t* update_indptr = nullptr;  ///< `[batch + 1]`, entry b's updates are [indptr[b], indptr[b + 1])
  const std::int32_t* update_cols = nullptr;    ///< `[updates]`, columns (< row_capacity)
  const std::int32_t* update_pages = nullptr;   ///< `[updates]`, the page id each column takes
  std::int64_t* slot_mapping = nullptr;         ///< out `[sum of entry_new]`
  std::int32_t* kv_indptr = nullptr;            ///< out `[batch + 1]`
  std::int32_t* kv_indices = nullptr;           ///< out `[sum of pages_b]`
  std::int32_t* kv_last_page_len = nullptr;     ///< out `[batch]`
  std::int32_t* qo_indptr = nullptr;            ///< out `[batch + 1]`
};

/// Fields of each sequence's row of `PagedAccounting::per_sequence`.
inline constexpr std::size_t kPagedSequenceFields = 4;
/// Fields of `PagedAccounting::pool`.
inline constexpr std::size_t kPagedPoolFields = 4;
/// Scratch bytes `PagedAccounting` needs per page of the pool (page_refs and page_fill).
inline constexpr std::size_t kPagedAccountingScratchBytesPerPage = 8;

/// The accounting of a paged cache, computed on the device from the
/// resident tables (which it only reads), equal to the host's counters. A
/// sequence of row r (r < group_rows) owns the rows r + g * group_rows of
/// the `groups` layer groups, each of the same length L = lengths[r]; a
/// column holding `null_page` (a window layer's dropped page; -1: none) holds no page.
/// - `per_sequence` int64 `[batch, 4]`: for row r = rows[b], (tokens L,
///   pages: the columns j < pages_of(L) of its rows that hold a page, bytes
///   pages * page_bytes, slack: the sum over those columns of page_size -
///   column_fill(L, j), the empty slots of its pages; with one group and no
///   null page, pages_of(L) and pages_of(L) * page_size - L);
/// - `pool` int64 `[4]`, over the `live` rows of live_rows (every live
///   sequence, each with its rows of every group): (pages_referenced: distinct pages their tables hold,
///   pages_shared: those held by more than one of them, tokens: over the
///   distinct referenced pages, each page's filled slots counted once (the
///   fill of the page in column j of row r is column_fill(L_r, j); holders
///   agree, the largest is taken), bytes_referenced: pages_referenced *
///   page_bytes).
/// `page_refs` and `page_fill` are scratch of num_pages uint32 each
/// (kPagedAccountingScratchBytesPerPage * num_pages bytes), overwritten.
///
/// Preconditions (the cache's; not checked): rows and live_rows below
/// group_rows, groups * group_rows <= tables.rows, live_rows distinct; with
/// groups or a null page the asked rows are live (their columns are read); every page id in the live rows' first
/// pages_of(L) columns below num_pages or null_page; a row holds a page at most once.
/// Integers: every backend gives the same answer exactly.
///
/// Bytes moved: 8 * num_pages scratch written, then 8 per live row and group (row id,
/// length) and 12 per page it holds (id read, two scratch atomics), 8 *
/// num_pages scratch read, 8 per asked row (id, length) and 32 written per
/// asked row, 32 for the pool.
struct PagedAccounting {
  PagedTables tables;                  ///< read only
  std::size_t num_pages = 0;           ///< pages of the pool
  std::size_t page_bytes = 0;          ///< bytes of one page over its group's layers
  std::size_t groups = 1;              ///< layer groups: rows per sequence
  std::size_t group_rows = 0;          ///< rows of one group's table: row r of group g is r + g * group_rows
  std::int32_t null_page = -1;         ///< the page id of no page, or -1
  const std::int32_t* rows = nullptr;  ///< `[batch]`: the sequences asked about
  std::size_t batch = 0;
  const std::int32_t* live_rows = nullptr;  ///< `[live]`: every live sequence, for the pool totals
  std::size_t live = 0;
  std::uint32_t* page_refs = nullptr;    ///< scratch `[num_pages]`
  std::uint32_t* page_fill = nullptr;    ///< scratch `[num_pages]`
  std::int64_t* per_sequence = nullptr;  ///< out `[batch, kPagedSequenceFields]`: tokens, pages, bytes, slack
  std::int64_t* pool = nullptr;  ///< out `[kPagedPoolFields]`: pages_referenced, pages_shared, tokens, bytes_referenced
};

/// Moves `tokens` tokens between slots of one layer's pages (compaction):
/// the key and value rows of every head of slot `src_slots[t]` are copied to
/// slot `dst_slots[t]` (int64, on the device; slots below num_pages *
/// page_size). Preconditions (not checked): the destination slots are
/// distinct and none is the source slot of another token (the cache moves
/// into fresh pages), so the order of the copies does not matter.
/// Bytes moved: 4 * tokens * kv_heads * head_dim * dtype size + 16 * tokens.
struct PagedMove {
  PagedPages pages;
  const std::int64_t* src_slots = nullptr;  ///< `[tokens]`
  const std::int64_t* dst_slots = nullptr;  ///< `[tokens]`
  std::size_t tokens = 0;
};

}  // namespace micache
