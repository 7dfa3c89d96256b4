#include <algorithm>
#include <functional>
#include <vector>

#include "cpu/kernels.hpp"
#include "micache/detail/top_k_key.hpp"

namespace micache::cpu {

// Per row: the head means are computed by head_mean (same bits as every other
// backend), turned into unique 64-bit keys (detail::top_k_key) and partially
// sorted descending, O(n_cols log k).
void top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights) {
  std::vector<float> means(view.n_cols);
  std::vector<std::uint64_t> keys(view.n_cols);
  HeadMeanView row_view = view;
  row_view.n_rows = 1;
  for (std::size_t r = 0; r < view.n_rows; ++r) {
    row_view.offset = view.offset + r * view.row_stride;
    head_mean(row_view, means.data());
    for (std::size_t c = 0; c < view.n_cols; ++c) {
      keys[c] = detail::top_k_key(float_bits(means[c]), static_cast<std::uint32_t>(c));
    }
    std::partial_sort(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k), keys.end(),
                      std::greater<>());
    for (std::size_t j = 0; j < k; ++j) {
      indices[r * k + j] = static_cast<std::int32_t>(detail::top_k_key_index(keys[j]));
      weights[r * k + j] = bits_float(detail::top_k_key_weight_bits(keys[j]));
    }
  }
}

}  // namespace micache::cpu
