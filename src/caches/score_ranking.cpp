#include "src/caches/score_ranking.hpp"

#include "micache/backend/backend.hpp"
#include "micache/registry.hpp"

namespace micache::detail {

std::vector<std::vector<std::int32_t>> top_scored(const Tensor& scores, std::size_t candidates, std::size_t k,
                                                  Stream stream) {
  const std::size_t rows = scores.rank() == 2 ? scores.dim(0) : 1;
  std::vector<std::vector<std::int32_t>> chosen(rows);
  if (k == 0) return chosen;
  HeadMeanView view;
  view.data = scores.data();
  view.dtype = scores.dtype();
  view.heads.count = 1;
  view.n_rows = rows;
  view.row_stride = scores.dim(scores.rank() - 1);
  view.n_cols = candidates;
  const Device device = scores.device();
  Tensor indices = Tensor::empty({rows, k}, DType::I32, device, stream);
  Tensor weights = Tensor::empty({rows, k}, DType::F32, device, stream);
  backend_for(device).top_k_head_mean(view, k, static_cast<std::int32_t*>(indices.mutable_data()),
                                      static_cast<float*>(weights.mutable_data()), stream);
  const std::vector<std::int32_t> top = indices.to_host_i32();
  for (std::size_t r = 0; r < rows; ++r) {
    const auto row = top.begin() + static_cast<std::ptrdiff_t>(r * k);
    chosen[r].assign(row, row + static_cast<std::ptrdiff_t>(k));
  }
  return chosen;
}

}  // namespace micache::detail
