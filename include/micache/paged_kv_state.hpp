// PagedKvState: a PagedKvCache's bookkeeping as plain host vectors (no page bytes), for files and migration.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "micache/position_runs.hpp"

namespace micache {

/// One sequence of a PagedKvState: everything PagedKvCache keeps of it.
struct PagedSequenceState {
  std::uint64_t id = 0;                      ///< its SequenceId
  /// Page ids in token order, ceil(length / page_size) per layer group,
  /// group after group; a window group's dropped columns hold the null page
  /// (PagedKvConfig::pool_pages()).
  std::vector<std::int32_t> pages;
  std::size_t length = 0;                    ///< tokens, reserved slots included
  std::vector<PositionRuns::Run> positions;  ///< original positions of its tokens, as runs, oldest first
  std::size_t next_position = 0;             ///< the position its next token gets
  bool naming = true;                        ///< whether its pages are still named as they fill
  std::uint64_t salt = 0;                    ///< of its hash chain
  std::array<std::uint64_t, 2> chain{};      ///< name (low, high) of its last full page; zero before the first
  std::vector<std::int32_t> tail_tokens;     ///< token ids of its partly filled last page (while naming)
  std::size_t row = 0;                       ///< its row of the device page tables

  friend bool operator==(const PagedSequenceState&, const PagedSequenceState&) = default;
};

/// A full page's name in a PagedKvState: XXH3-128 (low, high) of its hash chain.
struct PagedPageName {
  std::int32_t page = 0;
  std::uint64_t low = 0;
  std::uint64_t high = 0;

  friend bool operator==(const PagedPageName&, const PagedPageName&) = default;
};

/// A PagedKvCache's whole state but the page bytes (`PagedKvCache::state`,
/// `PagedKvCache::restore`): the sequences, the page pool, the free rows of
/// the device page tables and the counters, so that a cache restored from it
/// continues exactly as the one it was taken from (the same pages handed
/// out, the same rows, the same evictions, the same counters).
///
/// The pool: every page is used (reference count > 0: the sequences holding
/// it), cached (count 0, named, in `cached_pages`) or free (count 0, unnamed,
/// in `free_pages`).
struct PagedKvState {
  std::vector<PagedSequenceState> sequences;  ///< in increasing id order
  std::vector<std::uint32_t> references;      ///< per page (pool_pages() of them): sequences holding it
  std::vector<std::int32_t> free_pages;       ///< the free stack, bottom first: back() is handed out next
  std::vector<std::int32_t> cached_pages;     ///< the prefix cache, least recently released first
  std::vector<PagedPageName> names;           ///< the named pages (used or cached), in increasing page order
  std::vector<std::int32_t> free_rows;        ///< the free page-table rows, a stack: back() is taken next
  std::uint64_t next_id = 0;                  ///< the id the next sequence gets
  std::uint64_t step = 0;                     ///< successful begin_step calls (and compactions)
  std::uint64_t lookup_tokens = 0;            ///< PrefixCacheStats' counters
  std::uint64_t hit_tokens = 0;
  std::uint64_t hit_pages = 0;
  std::uint64_t evictions = 0;

  /// The pages whose bytes matter, the used and cached ones, in increasing id
  /// order: the pages `PagedKvCache::restore` takes the bytes of. O(pages).
  std::vector<std::int32_t> stored_pages() const;

  friend bool operator==(const PagedKvState&, const PagedKvState&) = default;
};

}  // namespace micache
