// Private, host-safe (g++ and nvcc, C++17): how the copy_tokens kernel splits
// a TokenCopy over blocks and threads. The kernel runs `copy_tokens_thread`;
// tests run the same function for every block and thread of a launch on the
// host and check that each destination unit is written once, from the right
// source unit, and that no index leaves its buffer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/grid.hpp"
#include "micache/backend/token_copy.hpp"
#include "micache/host_device.hpp"

namespace micache::cuda {

/// Threads per copy_tokens block.
inline constexpr unsigned kCopyBlockThreads = 256;

/// A copy_tokens launch: a 2-D block of `unit_threads` x `token_threads`
/// threads (x walks a token's units, y walks tokens) and a grid of
/// `token_blocks` x `pair_blocks` blocks (x over tiles of `token_threads`
/// tokens, y over (buffer, plane) pairs). Both grid dimensions are capped and
/// the kernel loops over both, so any TokenCopy is covered.
struct CopyTokensLaunch {
  unsigned unit_threads = 1;
  unsigned token_threads = 1;
  unsigned token_blocks = 1;
  unsigned pair_blocks = 1;
};

/// The launch for `copy`, moving `units` units per token. O(1).
constexpr CopyTokensLaunch plan_copy_tokens(const TokenCopy& copy, std::size_t units) {
  CopyTokensLaunch launch;
  launch.unit_threads = static_cast<unsigned>(std::clamp<std::size_t>(units, 1, kCopyBlockThreads));
  launch.token_threads = kCopyBlockThreads / launch.unit_threads;
  launch.token_blocks = grid_blocks(copy.tokens, launch.token_threads);
  launch.pair_blocks = grid_blocks(copy.buffers * copy.planes, 1, kMaxGridY);
  return launch;
}

/// Slot of logical position `logical` (< capacity) in a ring whose first slot
/// is `start` (< capacity): one compare and subtract, no division.
MICACHE_HOST_DEVICE constexpr std::size_t ring_slot(std::size_t start, std::size_t logical, std::size_t capacity) {
  const std::size_t slot = start + logical;
  return slot >= capacity ? slot - capacity : slot;
}

/// The work of thread (tx, ty) of block (bx, by): calls `move(buffer,
/// dst_unit, src_unit)` for each unit it copies, unit indices counted from
/// the buffers' bases. `copy.src_start < src_capacity` and
/// `copy.dst_start < dst_capacity` (the launcher reduces them), and every
/// gathered index is < src_capacity (TokenCopy's contract).
///
/// Index arithmetic: one division per (buffer, plane) pair a block visits,
/// multiplies and adds per token, one add per unit.
template <class Move>
MICACHE_HOST_DEVICE void copy_tokens_thread(const TokenCopy& copy, std::size_t units, const CopyTokensLaunch& launch,
                                            unsigned bx, unsigned by, unsigned tx, unsigned ty, Move&& move) {
  const std::size_t pairs = copy.buffers * copy.planes;
  const std::size_t token_stride = static_cast<std::size_t>(launch.token_blocks) * launch.token_threads;
  for (std::size_t pair = by; pair < pairs; pair += launch.pair_blocks) {
    const std::size_t buffer = pair / copy.planes;
    const std::size_t plane = pair - buffer * copy.planes;
    for (std::size_t token = static_cast<std::size_t>(bx) * launch.token_threads + ty; token < copy.tokens;
         token += token_stride) {
      const std::size_t logical = copy.src_tokens != nullptr ? static_cast<std::size_t>(copy.src_tokens[token]) : token;
      const std::size_t src =
          (plane * copy.src_capacity + ring_slot(copy.src_start, logical, copy.src_capacity)) * units;
      const std::size_t dst = (plane * copy.dst_capacity + ring_slot(copy.dst_start, token, copy.dst_capacity)) * units;
      for (std::size_t unit = tx; unit < units; unit += launch.unit_threads) move(buffer, dst + unit, src + unit);
    }
  }
}

}  // namespace micache::cuda
