// Private: a device matrix as host rows, the shape of the bitpolar-style host API.
#pragma once

#include <vector>

#include "micache/tensor.hpp"

namespace micache::detail {

/// Rows of an F32 `[rows, cols]` tensor, copied to the host (one device-to-host copy).
inline std::vector<std::vector<float>> host_rows(const Tensor& matrix) {
  const std::vector<float> flat = matrix.to_host_f32();
  std::vector<std::vector<float>> rows(matrix.dim(0));
  const std::size_t cols = matrix.dim(1);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    rows[r].assign(flat.begin() + static_cast<std::ptrdiff_t>(r * cols),
                   flat.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
  }
  return rows;
}

}  // namespace micache::detail
