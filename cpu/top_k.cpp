#include <algorithm>
#include <functional>
#include <vector>

#include "cpu/cpu_backend.hpp"
#include "cpu/head_mean.hpp"
#include "micache/backend/detail/top_k_key.hpp"

namespace micache {

// Head means of a block of rows at a time (head_mean_block_rows; same bits as
// every other backend, sequential reads of each head's block of rows), then per row the
// means become unique 64-bit keys (detail::top_k_key), partially sorted
// descending, O(n_cols log k).
void CpuBackend::top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                                 Stream stream) {
  require_live(stream);
  const std::size_t block_rows = cpu::head_mean_block_rows(view.n_cols);
  std::vector<float> means(block_rows * view.n_cols);
  std::vector<std::uint64_t> keys(view.n_cols);
  HeadMeanView block_view = view;
  for (std::size_t first = 0; first < view.n_rows; first += block_rows) {
    block_view.offset = view.offset + first * view.row_stride;
    block_view.n_rows = std::min(block_rows, view.n_rows - first);
    head_mean(block_view, means.data(), Stream{});
    for (std::size_t b = 0; b < block_view.n_rows; ++b) {
      const float* row_means = means.data() + b * view.n_cols;
      for (std::size_t c = 0; c < view.n_cols; ++c) {
        keys[c] = detail::top_k_key(float_bits(row_means[c]), static_cast<std::uint32_t>(c));
      }
      std::partial_sort(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k), keys.end(), std::greater<>());
      const std::size_t r = first + b;
      for (std::size_t j = 0; j < k; ++j) detail::store_top_k(keys[j], r * k + j, indices, weights);
    }
  }
}

}  // namespace micache
