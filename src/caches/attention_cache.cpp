#include "micache/attention_cache.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/caches/head_selection_impl.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

// Dimensions of a [batch, heads, seq_q, seq_k] pattern.
struct PatternDims {
  std::size_t batch, heads, seq_q, seq_k;

  explicit PatternDims(const Tensor& t) : batch(t.dim(0)), heads(t.dim(1)), seq_q(t.dim(2)), seq_k(t.dim(3)) {}
};

// The view of batch `selection.batch` of `pattern`, all rows and columns.
HeadMeanView pattern_view(const Tensor& pattern, const HeadSelection& selection) {
  const PatternDims d(pattern);
  HeadMeanView view;
  view.data = pattern.data();
  view.dtype = pattern.dtype();
  view.heads = detail::make_head_list(selection, d.batch, d.heads);
  view.head_stride = d.seq_q * d.seq_k;
  view.offset = selection.batch * d.heads * view.head_stride;
  view.n_rows = d.seq_q;
  view.row_stride = d.seq_k;
  view.n_cols = d.seq_k;
  view.col_stride = 1;
  return view;
}

// The view of query row `position` (validated against seq_q) of `pattern`.
HeadMeanView query_row_view(const Tensor& pattern, std::size_t position, const HeadSelection& selection) {
  detail::require_index(position, pattern.dim(2), "position", "seq_q");
  HeadMeanView view = pattern_view(pattern, selection);
  view.offset += position * view.row_stride;
  view.n_rows = 1;
  return view;
}

void require_k(std::size_t k) {
  if (k == 0) {
    throw Error(ErrorCode::Config, "k must be at least 1 for a device top-k result");
  }
}

TopK run_top_k(const Tensor& pattern, const HeadMeanView& view, std::size_t k, Stream stream) {
  if (view.n_cols > kMaxTopKColumns) {
    throw Error(ErrorCode::Shape,
                fmt::format("top-k over {} keys exceeds the int32 index range (max {})", view.n_cols, kMaxTopKColumns));
  }
  const std::size_t k_eff = std::min(k, view.n_cols);
  const Device device = pattern.device();
  TopK result{Tensor::empty({view.n_rows, k_eff}, DType::I32, device, stream),
              Tensor::empty({view.n_rows, k_eff}, DType::F32, device, stream)};
  backend_for(device).top_k_head_mean(view, k_eff, static_cast<std::int32_t*>(result.indices.mutable_data()),
                                      static_cast<float*>(result.weights.mutable_data()), stream);
  return result;
}

// Head means of `view` into a new F32 tensor of `shape` (n_rows * n_cols elements) on `stream`.
Tensor run_head_mean(const Tensor& pattern, const HeadMeanView& view, Shape shape, Stream stream) {
  Tensor out = Tensor::empty(std::move(shape), DType::F32, pattern.device(), stream);
  backend_for(pattern.device()).head_mean(view, static_cast<float*>(out.mutable_data()), stream);
  return out;
}

}  // namespace

AttentionCache AttentionCache::with_capacity(std::size_t n_layers, Stream stream) {
  AttentionCache cache(stream);
  cache.patterns_.reserve(n_layers);
  return cache;
}

void AttentionCache::push(Tensor pattern) {
  detail::require_defined(pattern, "pattern");
  detail::require_rank(pattern, 4, "pattern", "[batch, heads, seq_q, seq_k]");
  if (pattern.numel() == 0) {
    throw Error(ErrorCode::Shape, fmt::format("pattern {} has a zero dimension", pattern.shape().to_string()));
  }
  if (!patterns_.empty() && pattern.shape() != patterns_.front().shape()) {
    throw Error(ErrorCode::Shape, fmt::format("layer {} pattern {} differs from layer 0 {}", patterns_.size(),
                                              pattern.shape().to_string(), patterns_.front().shape().to_string()));
  }
  detail::require_float_dtype(pattern.dtype(), "pattern dtype");
  if (pattern.dim(3) >= 0xffffffffu) {
    throw Error(ErrorCode::Shape, fmt::format("seq_k {} exceeds the top-k index range", pattern.dim(3)));
  }
  patterns_.push_back(std::move(pattern));
}

const Tensor* AttentionCache::get_layer(std::size_t layer) const noexcept {
  return layer < patterns_.size() ? &patterns_[layer] : nullptr;
}

const Tensor& AttentionCache::layer_or_throw(std::size_t layer) const {
  if (layer >= patterns_.size()) {
    throw Error(ErrorCode::Hook, fmt::format("layer {} not in attention cache", layer));
  }
  return patterns_[layer];
}

Tensor AttentionCache::attention_from_position_tensor(std::size_t layer, std::size_t position,
                                                      const HeadSelection& selection) const {
  const Tensor& pattern = layer_or_throw(layer);
  const HeadMeanView view = query_row_view(pattern, position, selection);
  return run_head_mean(pattern, view, {view.n_cols}, stream_);
}

Tensor AttentionCache::attention_to_position_tensor(std::size_t layer, std::size_t position,
                                                    const HeadSelection& selection) const {
  const Tensor& pattern = layer_or_throw(layer);
  detail::require_index(position, pattern.dim(3), "position", "seq_k");
  HeadMeanView view = pattern_view(pattern, selection);
  view.offset += position;
  view.n_cols = view.n_rows;
  view.col_stride = view.row_stride;
  view.n_rows = 1;
  return run_head_mean(pattern, view, {view.n_cols}, stream_);
}

std::vector<float> AttentionCache::attention_from_position(std::size_t layer, std::size_t position,
                                                           const HeadSelection& selection) const {
  return attention_from_position_tensor(layer, position, selection).to_host_f32();
}

std::vector<float> AttentionCache::attention_to_position(std::size_t layer, std::size_t position,
                                                         const HeadSelection& selection) const {
  return attention_to_position_tensor(layer, position, selection).to_host_f32();
}

TopK AttentionCache::top_attended_tensor(std::size_t layer, std::size_t from_position, std::size_t k,
                                         const HeadSelection& selection) const {
  const Tensor& pattern = layer_or_throw(layer);
  const HeadMeanView view = query_row_view(pattern, from_position, selection);
  require_k(k);
  return run_top_k(pattern, view, k, stream_);
}

std::vector<std::pair<std::size_t, float>> AttentionCache::top_attended_positions(
    std::size_t layer, std::size_t from_position, std::size_t k, const HeadSelection& selection) const {
  if (k == 0) {
    query_row_view(layer_or_throw(layer), from_position, selection);  // validate only
    return {};
  }
  const TopK top = top_attended_tensor(layer, from_position, k, selection);
  const std::vector<std::int32_t> indices = top.indices.to_host_i32();
  const std::vector<float> weights = top.weights.to_host_f32();
  std::vector<std::pair<std::size_t, float>> result(indices.size());
  for (std::size_t j = 0; j < indices.size(); ++j) {
    result[j] = {static_cast<std::size_t>(indices[j]), weights[j]};
  }
  return result;
}

Tensor AttentionCache::head_mean(std::size_t layer, const HeadSelection& selection) const {
  const Tensor& pattern = layer_or_throw(layer);
  const HeadMeanView view = pattern_view(pattern, selection);
  return run_head_mean(pattern, view, {view.n_rows, view.n_cols}, stream_);
}

Tensor AttentionCache::attention_received(std::size_t layer, const HeadSelection& selection) const {
  const Tensor& pattern = layer_or_throw(layer);
  const HeadMeanView view = pattern_view(pattern, selection);
  Tensor out = Tensor::empty({view.n_cols}, DType::F32, pattern.device(), stream_);
  backend_for(pattern.device()).head_mean_column_sums(view, static_cast<float*>(out.mutable_data()), stream_);
  return out;
}

TopK AttentionCache::top_attended_all(std::size_t layer, std::size_t k, const HeadSelection& selection) const {
  const Tensor& pattern = layer_or_throw(layer);
  const HeadMeanView view = pattern_view(pattern, selection);
  require_k(k);
  return run_top_k(pattern, view, k, stream_);
}

}  // namespace micache
