// Plain description of a head-mean read over an attention pattern, passed to backends.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/dtype.hpp"

namespace micache {

/// Most heads a `HeadList` can name one by one (selecting all heads has no limit).
inline constexpr std::size_t kMaxListedHeads = 128;

/// Which heads a head mean averages, in the order they are summed.
///
/// `listed == false`: heads `0 .. count-1`. `listed == true`: `index[0 .. count-1]`,
/// ascending and distinct (the caches validate and sort before building one).
struct HeadList {
  std::uint32_t count = 0;
  bool listed = false;
  std::uint16_t index[kMaxListedHeads] = {};
};

/// A 2-D grid of head means over a pattern with any dtype and strides.
///
/// Output element `(r, c)`, for `r < n_rows` and `c < n_cols`, is
///
///     (sum over h in heads, in order, of f32(data[offset + h*head_stride
///                                               + r*row_stride + c*col_stride]))
///     / f32(heads.count)
///
/// summed in f32 left to right from +0.0 (so heads that are all -0.0 give
/// +0.0), and every backend gives the same bits; a NaN result may carry any
/// NaN payload (CUDA widens F16 NaNs to the canonical one). Strides
/// and offset count elements. A one-row query of a [B, H, Q, K] pattern is
/// `n_rows = 1, n_cols = K, col_stride = 1`; a key column is `n_cols = Q,
/// col_stride = K`; the whole head mean is `n_rows = Q, row_stride = K`.
struct HeadMeanView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::size_t offset = 0;
  std::size_t head_stride = 0;
  std::size_t n_rows = 0;
  std::size_t row_stride = 0;
  std::size_t n_cols = 0;
  std::size_t col_stride = 1;
  HeadList heads;
};

}  // namespace micache
