// Private, host-safe (g++ and nvcc, C++17): how the paged_write,
// paged_gather and paged_move kernels split their work over blocks and
// threads. All three move rows (head_dim elements of one head of one token,
// contiguous in the pages, in the packed inputs and in the dense outputs) in
// words of `unit` bytes through one loop (paged_rows_thread); the kernels run
// `paged_write_thread` / `paged_gather_thread` / `paged_move_thread`, and
// tests run the same functions for every block and thread of a launch on the
// host and check that each destination word is written once, from the right
// source word.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/grid.hpp"
#include "cuda/word_unit.hpp"
#include "micache/backend/paged_kv.hpp"
#include "micache/backend/paged_tables.hpp"
#include "micache/host_device.hpp"

namespace micache::cuda {

/// Threads per paged_write / paged_gather / paged_move block.
inline constexpr unsigned kPagedBlockThreads = 256;

/// The word size paged_write uses for `write`: dividing a row, the token
/// stride of the inputs, and the addresses of the pages, keys and values.
inline std::size_t paged_write_unit(const PagedWrite& write) {
  const std::size_t element = dtype_size(write.pages.dtype);
  return widest_unit({write.pages.head_dim * element, write.token_stride * element,
                      reinterpret_cast<std::uintptr_t>(write.pages.data), reinterpret_cast<std::uintptr_t>(write.keys),
                      reinterpret_cast<std::uintptr_t>(write.values)});
}

/// The word size paged_gather uses for `gather`: dividing a row and the
/// addresses of the pages and of the dense keys and values.
inline std::size_t paged_gather_unit(const PagedGather& gather) {
  return widest_unit({gather.pages.head_dim * dtype_size(gather.pages.dtype),
                      reinterpret_cast<std::uintptr_t>(gather.pages.data),
                      reinterpret_cast<std::uintptr_t>(gather.keys), reinterpret_cast<std::uintptr_t>(gather.values)});
}

/// Splits a slot (or a token index) into page and offset: a shift when
/// page_size is a power of two (every PagedKvCache's), else one division.
struct PageSplit {
  std::size_t page_size = 1;
  unsigned shift = 0;  ///< log2(page_size) when power_of_two
  bool power_of_two = true;

  MICACHE_HOST_DEVICE constexpr std::size_t page(std::size_t slot) const {
    return power_of_two ? slot >> shift : slot / page_size;
  }
};

/// The split for `page_size` (> 0). O(log page_size).
constexpr PageSplit plan_page_split(std::size_t page_size) {
  PageSplit split;
  split.page_size = page_size;
  split.power_of_two = (page_size & (page_size - 1)) == 0;
  while (split.power_of_two && (std::size_t{1} << split.shift) < page_size) ++split.shift;
  return split;
}

/// A paged_write, paged_gather or paged_move launch: a 2-D block of `unit_threads` x
/// `token_threads` threads (x walks a row's words, y walks tokens) and a grid
/// of `token_blocks` x `pair_blocks` blocks (x over tiles of `token_threads`
/// tokens, y over (kind, head) pairs: keys of heads 0..kv_heads-1, then
/// values). Both grid dimensions are capped and the kernels loop over both,
/// so any descriptor is covered.
struct PagedLaunch {
  unsigned unit_threads = 1;
  unsigned token_threads = 1;
  unsigned token_blocks = 1;
  unsigned pair_blocks = 1;
  std::size_t units = 1;        ///< words per row
  std::size_t token_units = 0;  ///< words between consecutive tokens of a write's inputs (0 for a gather or a move)
  PageSplit split;
};

/// The launch moving `tokens` tokens of `pages` in words of `unit` bytes
/// (dividing a row); `token_stride` is in elements. O(log page_size).
constexpr PagedLaunch plan_paged(const PagedPages& pages, std::size_t tokens, std::size_t token_stride,
                                 std::size_t unit) {
  PagedLaunch launch;
  const std::size_t element = dtype_size(pages.dtype);
  launch.units = pages.head_dim * element / unit;
  launch.token_units = token_stride * element / unit;
  launch.unit_threads = static_cast<unsigned>(std::clamp<std::size_t>(launch.units, 1, kPagedBlockThreads));
  launch.token_threads = kPagedBlockThreads / launch.unit_threads;
  launch.token_blocks = grid_blocks(tokens, launch.token_threads);
  launch.pair_blocks = grid_blocks(2 * pages.kv_heads, 1, kMaxGridY);
  launch.split = plan_page_split(pages.page_size);
  return launch;
}

/// `pages` measured in words of a launch: element() of it is a word index.
MICACHE_HOST_DEVICE constexpr PagedPages in_words(PagedPages pages, std::size_t units) {
  pages.head_dim = units;
  return pages;
}

/// The loop every paged copy runs: thread (tx, ty) of block (bx, by) of
/// `launch` visits its (kind, head) pairs (kind 0 keys, 1 values) and its
/// tokens below `tokens`; for each, `rows(kind, head, token, dst, src)` sets
/// the word indices of the destination and source rows (returning false
/// skips the token), then `move(kind, dst + w, src + w)` is called for each
/// of the row's words w the thread copies.
template <class Rows, class Move>
MICACHE_HOST_DEVICE void paged_rows_thread(const PagedLaunch& launch, std::size_t tokens, std::size_t heads,
                                           unsigned bx, unsigned by, unsigned tx, unsigned ty, Rows&& rows,
                                           Move&& move) {
  const std::size_t token_step = static_cast<std::size_t>(launch.token_blocks) * launch.token_threads;
  for (std::size_t pair = by; pair < 2 * heads; pair += launch.pair_blocks) {
    const std::size_t kind = pair < heads ? 0 : 1;
    const std::size_t head = pair - kind * heads;
    for (std::size_t token = static_cast<std::size_t>(bx) * launch.token_threads + ty; token < tokens;
         token += token_step) {
      std::size_t dst = 0;
      std::size_t src = 0;
      if (!rows(kind, head, token, dst, src)) continue;
      for (std::size_t unit = tx; unit < launch.units; unit += launch.unit_threads) move(kind, dst + unit, src + unit);
    }
  }
}

/// The page word of element 0 of row (kind, head) of slot `slot` (>= 0).
MICACHE_HOST_DEVICE constexpr std::size_t slot_row(const PagedPages& words, const PageSplit& split, std::int64_t slot,
                                                   std::size_t kind, std::size_t head) {
  const std::size_t page = split.page(static_cast<std::size_t>(slot));
  return words.element(page, kind, static_cast<std::size_t>(slot) - page * split.page_size, head, 0);
}

/// The work of thread (tx, ty) of block (bx, by) of a paged_write: calls
/// `move(kind, page_word, input_word)` for each word it copies (kind 0 from
/// the keys, 1 from the values; word indices from the pages' and the inputs'
/// bases), skipping tokens with a negative slot.
///
/// Index arithmetic: a compare per (kind, head) pair, a shift (a division if
/// page_size is not a power of two) and multiplies per token, an add per word.
template <class Move>
MICACHE_HOST_DEVICE void paged_write_thread(const PagedWrite& write, const PagedLaunch& launch, unsigned bx,
                                            unsigned by, unsigned tx, unsigned ty, Move&& move) {
  const PagedPages words = in_words(write.pages, launch.units);
  paged_rows_thread(
      launch, write.tokens, write.pages.kv_heads, bx, by, tx, ty,
      [&](std::size_t kind, std::size_t head, std::size_t token, std::size_t& dst, std::size_t& src) {
        const std::int64_t slot = write.slot_mapping[token];
        if (slot < 0) return false;
        dst = slot_row(words, launch.split, slot, kind, head);
        src = token * launch.token_units + head * launch.units;
        return true;
      },
      move);
}

/// The work of thread (tx, ty) of block (bx, by) of a paged_gather: calls
/// `move(kind, output_word, page_word)` for each word it copies (kind 0 into
/// the keys, 1 into the values; word indices from the outputs' and the
/// pages' bases).
///
/// Index arithmetic as paged_write_thread's.
template <class Move>
MICACHE_HOST_DEVICE void paged_gather_thread(const PagedGather& gather, const PagedLaunch& launch, unsigned bx,
                                             unsigned by, unsigned tx, unsigned ty, Move&& move) {
  const PagedPages words = in_words(gather.pages, launch.units);
  paged_rows_thread(
      launch, gather.tokens, gather.pages.kv_heads, bx, by, tx, ty,
      [&](std::size_t kind, std::size_t head, std::size_t token, std::size_t& dst, std::size_t& src) {
        const std::size_t entry = launch.split.page(token);
        const std::size_t offset = token - entry * launch.split.page_size;
        const auto page = static_cast<std::size_t>(gather.page_ids[entry]);
        src = words.element(page, kind, offset, head, 0);
        dst = (head * gather.tokens + token) * launch.units;
        return true;
      },
      move);
}

/// The word size paged_move uses for `move`: dividing a row and the pages' address.
inline std::size_t paged_move_unit(const PagedMove& move) {
  return widest_unit(
      {move.pages.head_dim * dtype_size(move.pages.dtype), reinterpret_cast<std::uintptr_t>(move.pages.data)});
}

/// The work of thread (tx, ty) of block (bx, by) of a paged_move: calls
/// `copy(kind, destination_word, source_word)` for each word it copies,
/// both word indices from the pages' base.
///
/// Index arithmetic: as paged_write_thread's, twice per token (both slots).
template <class Copy>
MICACHE_HOST_DEVICE void paged_move_thread(const PagedMove& move, const PagedLaunch& launch, unsigned bx, unsigned by,
                                           unsigned tx, unsigned ty, Copy&& copy) {
  const PagedPages words = in_words(move.pages, launch.units);
  paged_rows_thread(
      launch, move.tokens, move.pages.kv_heads, bx, by, tx, ty,
      [&](std::size_t kind, std::size_t head, std::size_t token, std::size_t& dst, std::size_t& src) {
        dst = slot_row(words, launch.split, move.dst_slots[token], kind, head);
        src = slot_row(words, launch.split, move.src_slots[token], kind, head);
        return true;
      },
      copy);
}

}  // namespace micache::cuda
