#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cpu_backend.hpp"
#include "micache/backend/detail/qjl_projection.hpp"
#include "micache/backend/detail/rounding.hpp"

namespace micache {

// Memory access: per request, per query head, each attended key row read twice (the
// max, then the weights) and each value row once, in token order; the
// order of every operation is PagedDecodeAttention's.
void CpuBackend::paged_decode_attention(const PagedDecodeAttention& a, Stream stream) {
  require_live(stream);
  const PagedPages& pages = a.pages;
  const std::size_t dim = pages.head_dim;
  const auto n = static_cast<std::uint32_t>(dim);
  std::vector<float> query(dim), key(dim), scores, accumulator(dim);
  for (std::size_t i = 0; i < a.batch; ++i) {
    const AttendedTokens attended = a.attended(i);
    const std::size_t tokens = attended.count;
    scores.resize(tokens);
    for (std::size_t q = 0; q < a.qo_heads; ++q) {
      const std::size_t head = q / a.group_size();
      float* out = a.out + (i * a.qo_heads + q) * dim;
      for (std::size_t d = 0; d < dim; ++d)
        query[d] = load_as_f32(a.queries, pages.dtype, i * a.query_stride + q * dim + d);
      float max = -std::numeric_limits<float>::infinity();
      for (std::size_t t = 0; t < tokens; ++t) {
        const std::size_t row = a.row(i, attended.token(t), 0, head);
        for (std::size_t d = 0; d < dim; ++d) key[d] = load_as_f32(pages.data, pages.dtype, row + d);
        scores[t] = detail::mul_rn(detail::warp_order_dot(query.data(), key.data(), n), a.scale);
        max = scores[t] > max ? scores[t] : max;
      }
      float sum = 0.0f;
      std::fill(accumulator.begin(), accumulator.end(), 0.0f);
      for (std::size_t t = 0; t < tokens; ++t) {
        const float weight = detail::exp_f32(scores[t] - max);
        sum = detail::add_rn(sum, weight);
        const std::size_t row = a.row(i, attended.token(t), 1, head);
        for (std::size_t d = 0; d < dim; ++d) {
          accumulator[d] =
              detail::add_rn(accumulator[d], detail::mul_rn(weight, load_as_f32(pages.data, pages.dtype, row + d)));
        }
      }
      for (std::size_t d = 0; d < dim; ++d) out[d] = tokens == 0 ? 0.0f : detail::div_rn(accumulator[d], sum);
      if (a.lse != nullptr) {
        a.lse[i * a.qo_heads + q] =
            tokens == 0 ? -std::numeric_limits<float>::infinity() : detail::add_rn(max, std::log(sum));
      }
    }
  }
}

}  // namespace micache
