// How the CPU's head means walk rows, shared by head_mean.cpp and top_k.cpp.
#pragma once

#include <cstddef>

namespace micache::cpu {

/// Output rows CpuBackend::head_mean accumulates together for rows of
/// `n_cols` columns: enough that each head's slice of a block of rows is one
/// long sequential read, few enough (at most 64, at most 512 KiB of f32
/// accumulators) that the block stays in the L2 cache. Callers that hold head
/// means of a block size their buffers by it. O(1).
std::size_t head_mean_block_rows(std::size_t n_cols);

}  // namespace micache::cpu
