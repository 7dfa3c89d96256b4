// Private, host-safe (g++ and nvcc, C++17): the one formula that sizes every
// grid dimension of micache's kernels, and the limits it keeps.
#pragma once

#include <algorithm>
#include <cstddef>

namespace micache::cuda {

/// Most blocks micache launches along x. Every kernel whose work can exceed
/// `kMaxGridBlocks * blockDim` loops over it (grid-stride), so the cap bounds
/// launch size, never coverage.
inline constexpr std::size_t kMaxGridBlocks = std::size_t{1} << 20;

/// Most blocks along y or z (CUDA's limit); kernels loop over y the same way.
inline constexpr std::size_t kMaxGridY = 65535;

/// Blocks covering `items` work items at `items_per_block` each, clamped to
/// [1, cap]. O(1).
constexpr unsigned grid_blocks(std::size_t items, std::size_t items_per_block, std::size_t cap = kMaxGridBlocks) {
  const std::size_t blocks = (items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned>(std::clamp<std::size_t>(blocks, 1, cap));
}

}  // namespace micache::cuda
