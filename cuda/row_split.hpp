// Private, host-safe (g++ and nvcc, C++17): how one-row and few-row queries
// spread a row over many blocks so that a latency-bound query still uses the
// whole GPU. Tests walk these plans on the host for every block.
#pragma once

#include <algorithm>
#include <cstddef>

#include "cuda/grid.hpp"

namespace micache::cuda {

// ---- head_mean of one row: column tiles, heads staged through shared memory ----

/// Columns per block of the one-row head mean: 64 columns x 32 heads is 2048
/// independent loads in flight per block, and seq_k 8192 gives 128 blocks.
inline constexpr std::size_t kRowTileColumns = 64;
/// Heads staged in shared memory at once (64 x 32 floats = 8 KiB).
inline constexpr std::size_t kRowHeadChunk = 32;
/// Threads per block of the one-row head mean.
inline constexpr unsigned kRowBlockThreads = 256;

/// Blocks of the one-row head mean over `n_cols` columns (the kernel loops
/// over tiles beyond the cap).
constexpr unsigned row_tile_blocks(std::size_t n_cols) { return grid_blocks(n_cols, kRowTileColumns); }

// ---- top-k of few rows: each row split into segments, then merged ----

/// Largest k the warp-level top-k selection handles (a warp's queue holds 32
/// keys); larger k take the radix select (cuda/radix_select.hpp), then a sort.
inline constexpr std::size_t kWarpTopKMax = 32;

/// Least columns a top-k segment holds: below this a block's launch and merge
/// cost more than its loads.
inline constexpr std::size_t kTopKMinSegmentColumns = 1024;

/// How top_k_warp splits rows: each row's columns are `segments` ranges of
/// `segment_columns` (the last may be shorter), one block each. With one
/// segment the blocks write the answer; with more, each writes its k best
/// keys to scratch and a merge kernel (block per row) keeps the k best of
/// `segments * k`. Keys are unique and totally ordered, so the answer does not
/// depend on the split.
struct TopKSplit {
  std::size_t segments = 1;
  std::size_t segment_columns = 0;
};

/// A split giving about `2 * sms` blocks in all (two waves of blocks per SM
/// keep loads in flight while others merge), never segments shorter than
/// kTopKMinSegmentColumns, segment lengths multiples of `tile_columns` (the
/// columns a block reads per step). n_rows, n_cols, tile_columns >= 1. O(1).
constexpr TopKSplit plan_top_k_split(std::size_t n_rows, std::size_t n_cols, std::size_t tile_columns,
                                     std::size_t sms) {
  const std::size_t wanted = std::max<std::size_t>(1, (2 * sms + n_rows - 1) / n_rows);
  const std::size_t most = std::max<std::size_t>(1, n_cols / kTopKMinSegmentColumns);
  const std::size_t segments = std::min({wanted, most, kMaxGridY});
  const std::size_t per_segment = (n_cols + segments - 1) / segments;
  TopKSplit split;
  split.segment_columns = (per_segment + tile_columns - 1) / tile_columns * tile_columns;
  split.segments = (n_cols + split.segment_columns - 1) / split.segment_columns;
  return split;
}

}  // namespace micache::cuda
