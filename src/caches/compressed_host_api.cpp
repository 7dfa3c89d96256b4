// bitpolar's host-vector API over a CompressedHeads store: CompressedCacheBase's host forms and KvHeadView.
//
// Host vectors are checked here, with bitpolar's messages, before anything is
// uploaded; the store is then asked to skip its device finiteness scan.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "micache/kv_cache_compressor.hpp"
#include "src/caches/compressed_errors.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

using HostVectors = std::vector<std::vector<float>>;

// `expected_count` vectors of `dim` finite floats; vector h is named `{per_vector} {first_head + h}`.
void validate_host_vectors(const HostVectors& vectors, std::size_t expected_count, std::size_t dim, const char* what,
                           const char* per_vector, std::size_t first_head = 0) {
  if (vectors.size() != expected_count) {
    throw detail::dimension_mismatch(expected_count, vectors.size(), fmt::format("{}: one vector per head", what));
  }
  for (std::size_t h = 0; h < vectors.size(); ++h) {
    if (vectors[h].size() != dim) {
      throw detail::dimension_mismatch(dim, vectors[h].size(), fmt::format("{} {}", per_vector, first_head + h));
    }
  }
  for (std::size_t h = 0; h < vectors.size(); ++h) {
    const auto bad = std::find_if(vectors[h].begin(), vectors[h].end(), [](float v) { return !std::isfinite(v); });
    if (bad != vectors[h].end()) {
      throw detail::non_finite_input(static_cast<std::size_t>(bad - vectors[h].begin()),
                                     fmt::format("{} {}", per_vector, first_head + h));
    }
  }
}

// The vectors as one F32 [vectors, head_dim] tensor on the store's device (one host-to-device copy).
Tensor upload(const CompressedHeads& heads, const HostVectors& vectors) {
  const std::size_t dim = heads.config().head_dim;
  std::vector<float> flat;
  flat.reserve(vectors.size() * dim);
  for (const std::vector<float>& v : vectors) flat.insert(flat.end(), v.begin(), v.end());
  return Tensor::from_host(flat, {vectors.size(), dim}, DType::F32, heads.device(), heads.stream());
}

// Rows of an F32 [rows, cols] tensor, copied to the host (one device-to-host copy).
HostVectors host_rows(const Tensor& matrix) {
  const std::vector<float> flat = matrix.to_host_f32();
  HostVectors rows(matrix.dim(0));
  const std::size_t cols = matrix.dim(1);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    rows[r].assign(flat.begin() + static_cast<std::ptrdiff_t>(r * cols),
                   flat.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
  }
  return rows;
}

// Checked queries of every query head, uploaded.
Tensor checked_queries(const CompressedHeads& heads, const HostVectors& queries, std::size_t group_size) {
  validate_host_vectors(queries, heads.num_heads() * group_size, heads.config().head_dim, "queries", "query of head");
  return upload(heads, queries);
}

}  // namespace

void CompressedCacheBase::push_host(const HostVectors& keys, const HostVectors& values) {
  validate_host_vectors(keys, heads_.num_heads(), heads_.config().head_dim, "keys", "keys of head");
  validate_host_vectors(values, heads_.num_heads(), heads_.config().head_dim, "values", "values of head");
  heads_.push(upload(heads_, keys), upload(heads_, values), FiniteCheck::Skip);
}

HostVectors CompressedCacheBase::scores_host(const HostVectors& queries, std::size_t group_size) const {
  return host_rows(heads_.scores(checked_queries(heads_, queries, group_size), group_size, FiniteCheck::Skip));
}

HostVectors CompressedCacheBase::outputs_host(const HostVectors& queries, std::size_t group_size) const {
  return host_rows(
      heads_.attention_output(checked_queries(heads_, queries, group_size), group_size, FiniteCheck::Skip));
}

std::vector<float> KvHeadView::attention_scores(const std::vector<float>& query) const {
  detail::require_index(head_, heads_->num_heads(), "head", "num_heads");
  validate_host_vectors({query}, 1, heads_->config().head_dim, "query", "query of head", head_);
  return heads_->head_scores(head_, upload(*heads_, {query}), FiniteCheck::Skip).to_host_f32();
}

HostVectors KvHeadView::decode_keys() const { return host_rows(heads_->decode_keys(head_)); }

HostVectors KvHeadView::decode_values() const { return host_rows(heads_->decode_values(head_)); }

}  // namespace micache
