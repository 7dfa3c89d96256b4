// PagedKvCache::decode_attention: validation, then one Backend::paged_decode_attention over the plan's metadata.
#include <fmt/format.h>

#include <cmath>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/paged_kv_cache.hpp"
#include "src/core/checks.hpp"

namespace micache {

Tensor PagedKvCache::decode_attention(std::size_t layer, const PagedStepPlan& plan, const Tensor& queries,
                                      float scale) const {
  const std::size_t group = group_of(layer);
  if (plan.cache_ != serial_) {
    throw Error(ErrorCode::Config, "decode_attention: the plan is of another cache (or of none)");
  }
  if (plan.step_ != step_) {
    throw Error(ErrorCode::Config,
                fmt::format("decode_attention: the plan is of step {}, the cache is at step {}", plan.step_, step_));
  }
  const std::size_t head_dim = config_.head_dim;
  if (head_dim > kPagedAttentionMaxHeadDim) {
    throw Error(ErrorCode::Config,
                fmt::format("decode_attention: head_dim {} is above {}", head_dim, kPagedAttentionMaxHeadDim));
  }
  const char* what = "decode_attention: queries";
  detail::require_defined(queries, what);
  detail::require_rank(queries, 3, what, "[batch, qo_heads, head_dim]");
  const std::size_t qo_heads = queries.shape()[1];
  if (queries.shape()[0] != plan.batch || queries.shape()[2] != head_dim) {
    throw Error(ErrorCode::Shape, fmt::format("{} {} must be [{}, qo_heads, {}] ([batch, qo_heads, head_dim])", what,
                                              queries.shape().to_string(), plan.batch, head_dim));
  }
  if (qo_heads == 0 || qo_heads % config_.kv_heads != 0) {
    throw Error(ErrorCode::Shape, fmt::format("{}: qo_heads {} must be a positive multiple of kv_heads {}", what,
                                              qo_heads, config_.kv_heads));
  }
  if (queries.dtype() != config_.dtype) {
    throw Error(ErrorCode::Config,
                fmt::format("{} are {}, the pages {}", what, dtype_name(queries.dtype()), dtype_name(config_.dtype)));
  }
  detail::require_device(queries.device(), device_, what);
  if (!std::isfinite(scale))
    throw Error(ErrorCode::Config, fmt::format("decode_attention: scale {} is not finite", scale));
  const float applied = scale == 0.0f ? 1.0f / std::sqrt(static_cast<float>(head_dim)) : scale;
  Tensor out = Tensor::empty({plan.batch, qo_heads, head_dim}, DType::F32, device_, stream_);
  backend_->paged_decode_attention(
      PagedDecodeAttention{.pages = page_layout(layer),
                           .queries = queries.data(),
                           .query_stride = qo_heads * head_dim,
                           .batch = plan.batch,
                           .qo_heads = qo_heads,
                           .kv_indptr = static_cast<const std::int32_t*>(plan.kv_indptr.data()),
                           .kv_indices = static_cast<const std::int32_t*>(plan.kv_indices.data()) +
                                         group * plan.total_pages,
                           .kv_last_page_len = static_cast<const std::int32_t*>(plan.kv_last_page_len.data()),
                           .scale = applied,
                           .window = groups_.group_kinds[group].window,
                           .sinks = groups_.group_kinds[group].sinks,
                           .out = static_cast<float*>(const_cast<void*>(out.data())),
                           .lse = nullptr},
      stream_);
  return out;
}

}  // namespace micache
