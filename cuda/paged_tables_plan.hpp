// Private, host-safe (g++ and nvcc, C++17): what each thread of the
// paged_build_step and paged_accounting kernels does. The kernels run these
// functions between their block-wide sums and barriers; tests run them for
// every thread of a launch on the host, phase by phase, and compare the
// result with CpuBackend's.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/grid.hpp"
#include "cuda/paged_kv_plan.hpp"
#include "micache/backend/paged_tables.hpp"
#include "micache/host_device.hpp"

namespace micache::cuda {

/// Threads per paged_build_step block (one block per entry).
inline constexpr unsigned kPagedStepThreads = 256;
/// Threads of the one paged_accounting block.
inline constexpr unsigned kPagedAccountingThreads = 1024;
/// Lanes of a warp: paged_accounting gives each live row to one warp.
inline constexpr unsigned kPagedWarpLanes = 32;

/// A paged_build_step launch: `blocks` blocks of kPagedStepThreads threads;
/// block x builds entries x, x + blocks, ... (a grid-stride loop, so any
/// batch is covered).
struct PagedStepLaunch {
  unsigned blocks = 1;
  PageSplit split;
};

/// The launch of `build` (batch > 0): a block per entry up to kMaxGridBlocks. O(log page_size).
constexpr PagedStepLaunch plan_paged_step(const PagedStepBuild& build) {
  return {grid_blocks(build.batch, 1), plan_page_split(build.tables.page_size)};
}

/// Where an entry's outputs start: the pages and the new tokens of the
/// entries before it (kv_indptr[b], qo_indptr[b]).
struct PagedStepOffsets {
  std::int64_t pages = 0;
  std::int64_t tokens = 0;
};

/// Thread `tid` of `threads`' part of entry b's offsets: the sums over the
/// entries e < b with e % threads == tid. The block adds the parts of all
/// its threads. O(b / threads).
MICACHE_HOST_DEVICE inline PagedStepOffsets paged_step_offsets_thread(const PagedStepBuild& build,
                                                                      const PageSplit& split, std::size_t b,
                                                                      unsigned tid, unsigned threads) {
  PagedStepOffsets part;
  for (std::size_t e = tid; e < b; e += threads) {
    part.pages +=
        static_cast<std::int64_t>(split.page(static_cast<std::size_t>(build.entry_lengths[e]) + split.page_size - 1));
    part.tokens += build.entry_new[e];
  }
  return part;
}

/// Thread `tid` of `threads`' part of entry b's table changes: its updates
/// with index % threads == tid, and (thread 0) the row's length. O(updates / threads).
MICACHE_HOST_DEVICE inline void paged_step_update_thread(const PagedStepBuild& build, std::size_t b, unsigned tid,
                                                         unsigned threads) {
  const auto row = static_cast<std::size_t>(build.entry_rows[b]);
  const auto last = static_cast<std::size_t>(build.update_indptr[b + 1]);
  for (auto k = static_cast<std::size_t>(build.update_indptr[b]) + tid; k < last; k += threads) {
    build.tables.page(row, static_cast<std::size_t>(build.update_cols[k])) = build.update_pages[k];
  }
  if (tid == 0) build.tables.lengths[row] = build.entry_lengths[b];
}

/// Thread `tid` of `threads`' part of entry b's outputs, once every update
/// of the entry is visible: its pages j and new tokens i with j, i % threads
/// == tid, and (thread 0) the entry's indptr ends and last page length (and,
/// for entry 0, kv_indptr[0] and qo_indptr[0]). O((pages + new tokens) / threads).
MICACHE_HOST_DEVICE inline void paged_step_write_thread(const PagedStepBuild& build, const PageSplit& split,
                                                        std::size_t b, const PagedStepOffsets& offsets, unsigned tid,
                                                        unsigned threads) {
  const PagedTables& tables = build.tables;
  const auto row = static_cast<std::size_t>(build.entry_rows[b]);
  const auto length = static_cast<std::size_t>(build.entry_lengths[b]);
  const auto fresh = static_cast<std::size_t>(build.entry_new[b]);
  const std::size_t pages = split.page(length + split.page_size - 1);
  const auto first_page = static_cast<std::size_t>(offsets.pages);
  const auto first_token = static_cast<std::size_t>(offsets.tokens);
  for (std::size_t j = tid; j < pages; j += threads) build.kv_indices[first_page + j] = tables.page(row, j);
  for (std::size_t i = tid; i < fresh; i += threads) {
    const std::size_t token = length - fresh + i;
    const std::size_t column = split.page(token);
    build.slot_mapping[first_token + i] =
        static_cast<std::int64_t>(tables.page(row, column)) * static_cast<std::int64_t>(split.page_size) +
        static_cast<std::int64_t>(token - column * split.page_size);
  }
  if (tid != 0) return;
  if (b == 0) {
    build.kv_indptr[0] = 0;
    build.qo_indptr[0] = 0;
  }
  build.kv_indptr[b + 1] = static_cast<std::int32_t>(offsets.pages + static_cast<std::int64_t>(pages));
  build.qo_indptr[b + 1] = static_cast<std::int32_t>(offsets.tokens + static_cast<std::int64_t>(fresh));
  build.kv_last_page_len[b] = static_cast<std::int32_t>(length == 0 ? 0 : length - (pages - 1) * split.page_size);
}

/// Thread `tid` of `threads`' asked rows b (b % threads == tid): their
/// per_sequence rows. O(batch / threads), times the rows' pages with groups or a null page.
MICACHE_HOST_DEVICE inline void paged_accounting_sequence_thread(const PagedAccounting& accounting, unsigned tid,
                                                                 unsigned threads) {
  const PagedTables& tables = accounting.tables;
  const auto page_size = static_cast<std::int64_t>(tables.page_size);
  for (std::size_t b = tid; b < accounting.batch; b += threads) {
    const auto row = static_cast<std::size_t>(accounting.rows[b]);
    const auto length = static_cast<std::size_t>(tables.lengths[row]);
    const std::size_t columns = tables.pages_of(length);
    auto pages = static_cast<std::int64_t>(columns);
    auto slots = static_cast<std::int64_t>(length);
    if (accounting.groups != 1 || accounting.null_page >= 0) {
      pages = 0;
      slots = 0;
      for (std::size_t g = 0; g < accounting.groups; ++g) {
        for (std::size_t j = 0; j < columns; ++j) {
          if (tables.page(row + g * accounting.group_rows, j) == accounting.null_page) continue;
          ++pages;
          slots += static_cast<std::int64_t>(tables.column_fill(length, j));
        }
      }
    }
    std::int64_t* out = accounting.per_sequence + b * kPagedSequenceFields;
    out[0] = static_cast<std::int64_t>(length);
    out[1] = pages;
    out[2] = pages * static_cast<std::int64_t>(accounting.page_bytes);
    out[3] = pages * page_size - slots;
  }
}

/// Thread `tid` of `threads`' part of zeroing the scratch. O(num_pages / threads).
MICACHE_HOST_DEVICE inline void paged_accounting_zero_thread(const PagedAccounting& accounting, unsigned tid,
                                                             unsigned threads) {
  for (std::size_t p = tid; p < accounting.num_pages; p += threads) {
    accounting.page_refs[p] = 0;
    accounting.page_fill[p] = 0;
  }
}

/// Lane `lane` of warp `warp` of `warps`' part of the counting: the rows
/// (live row i, group g) with (i * groups + g) % warps == warp, their
/// columns j with j % kPagedWarpLanes == lane that hold a page; `count(page,
/// fill)` for each (the kernel: an atomic add of one reference and an atomic
/// max of the fill). O(live * groups / warps * (1 + longest row's pages / 32)).
template <class Count>
MICACHE_HOST_DEVICE void paged_accounting_count_thread(const PagedAccounting& accounting, unsigned warp, unsigned warps,
                                                       unsigned lane, Count&& count) {
  const PagedTables& tables = accounting.tables;
  for (std::size_t k = warp; k < accounting.live * accounting.groups; k += warps) {
    const auto live_row = static_cast<std::size_t>(accounting.live_rows[k / accounting.groups]);
    const std::size_t row = live_row + (k % accounting.groups) * accounting.group_rows;
    const auto length = static_cast<std::size_t>(tables.lengths[live_row]);
    const std::size_t pages = tables.pages_of(length);
    for (std::size_t j = lane; j < pages; j += kPagedWarpLanes) {
      const std::int32_t page = tables.page(row, j);
      if (page == accounting.null_page) continue;
      count(static_cast<std::size_t>(page), static_cast<std::uint32_t>(tables.column_fill(length, j)));
    }
  }
}

/// The pool's sums: referenced pages, shared pages, their tokens.
struct PagedPoolSums {
  std::int64_t referenced = 0;
  std::int64_t shared = 0;
  std::int64_t tokens = 0;
};

/// Thread `tid` of `threads`' part of the pool's sums, over pages p with p %
/// threads == tid, once every count is visible. O(num_pages / threads).
MICACHE_HOST_DEVICE inline PagedPoolSums paged_accounting_pool_thread(const PagedAccounting& accounting, unsigned tid,
                                                                      unsigned threads) {
  PagedPoolSums part;
  for (std::size_t p = tid; p < accounting.num_pages; p += threads) {
    const std::uint32_t refs = accounting.page_refs[p];
    part.referenced += refs > 0 ? 1 : 0;
    part.shared += refs > 1 ? 1 : 0;
    part.tokens += accounting.page_fill[p];
  }
  return part;
}

/// Stores the block's pool sums into `accounting.pool`.
MICACHE_HOST_DEVICE inline void paged_accounting_store_pool(const PagedAccounting& accounting,
                                                            const PagedPoolSums& sums) {
  accounting.pool[0] = sums.referenced;
  accounting.pool[1] = sums.shared;
  accounting.pool[2] = sums.tokens;
  accounting.pool[3] = sums.referenced * static_cast<std::int64_t>(accounting.page_bytes);
}

}  // namespace micache::cuda
