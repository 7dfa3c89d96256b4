#include "micache/compressed_heads.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/backend/compressed_records.hpp"
#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/caches/compressed_errors.hpp"
#include "src/core/checks.hpp"
#include "src/core/ring_copy.hpp"
#include "src/quant/head_tables.hpp"

namespace micache {
namespace {

constexpr std::size_t kMinCapacity = 16;

void check_float_tensor(const Tensor& t, Device device, const char* what) {
  detail::require_defined(t, what);
  detail::require_float_dtype(t.dtype(), what);
  detail::require_device(t.device(), device, what);
}

void check_group_size(std::size_t group_size) {
  if (group_size == 0) throw Error(ErrorCode::Config, "group_size must be > 0");
}

}  // namespace

CompressedHeads::CompressedHeads(std::size_t num_heads, const KvCacheConfig& config, Device device, Stream stream)
    : num_heads_(num_heads), config_(config), device_(device), stream_(stream) {
  if (num_heads == 0) throw Error(ErrorCode::EmptyInput, "empty input: num_heads must be > 0");
  config.validate();
  backend_for(device);  // fails early for an unusable device
  tables_ = std::make_shared<const detail::HeadTables>(detail::make_head_tables(num_heads, config, device, stream));
}

RecordRing CompressedHeads::key_ring() const {
  return detail::ring_of(tables_->keys, key_records_, num_heads_, start_);
}

RecordRing CompressedHeads::value_ring() const {
  return detail::ring_of(tables_->values, value_records_, num_heads_, start_);
}

void CompressedHeads::push(const Tensor& keys, const Tensor& values, FiniteCheck check) {
  for (const auto& [tensor, what] : {std::pair{&keys, "keys"}, std::pair{&values, "values"}}) {
    check_float_tensor(*tensor, device_, what);
    if (tensor->rank() != 2 && tensor->rank() != 3) {
      throw Error(ErrorCode::Shape,
                  fmt::format("{} must be [num_heads, head_dim] or [num_heads, tokens, head_dim], got {}", what,
                              tensor->shape().to_string()));
    }
    const std::size_t heads = tensor->dim(0);
    const std::size_t dim = tensor->dim(tensor->rank() - 1);
    if (heads != num_heads_) throw detail::dimension_mismatch(num_heads_, heads, fmt::format("{}: heads", what));
    if (dim != config_.head_dim) {
      throw detail::dimension_mismatch(config_.head_dim, dim, fmt::format("{}: head_dim", what));
    }
  }
  if (keys.shape() != values.shape()) {
    throw Error(ErrorCode::Shape, fmt::format("keys {} and values {} differ in shape", keys.shape().to_string(),
                                              values.shape().to_string()));
  }
  const std::size_t tokens = keys.rank() == 3 ? keys.dim(1) : 1;
  if (check == FiniteCheck::Scan) {
    Backend& backend = backend_for(device_);
    for (const auto& [tensor, what] : {std::pair{&keys, "keys"}, std::pair{&values, "values"}}) {
      const std::size_t bad = backend.find_non_finite(tensor->data(), tensor->dtype(), tensor->numel(), stream_);
      if (bad != tensor->numel()) {
        const std::size_t per_head = tokens * config_.head_dim;
        throw detail::non_finite_input(
            bad % config_.head_dim,
            fmt::format("{} of head {}, token {}", what, bad / per_head, (bad % per_head) / config_.head_dim));
      }
    }
  }
  append_encoded(keys, values, tokens);
}

// New rings of `capacity` tokens (>= len) holding the current tokens from slot 0.
std::pair<Tensor, Tensor> CompressedHeads::resized_rings(std::size_t capacity) const {
  std::pair<Tensor, Tensor> next{
      Tensor::empty({num_heads_, capacity, key_record_bytes()}, DType::U8, device_, stream_),
      Tensor::empty({num_heads_, capacity, value_record_bytes()}, DType::U8, device_, stream_)};
  if (length_ != 0) {
    detail::copy_ring(key_records_, next.first, {.src_start = start_, .tokens = length_});
    detail::copy_ring(value_records_, next.second, {.src_start = start_, .tokens = length_});
  }
  return next;
}

std::size_t CompressedHeads::capacity() const noexcept { return key_records_.defined() ? key_records_.dim(1) : 0; }

// Encodes `tokens` validated tokens per head after the last one, growing the
// rings first if needed. Nothing changes until every allocation has succeeded.
void CompressedHeads::append_encoded(const Tensor& keys, const Tensor& values, std::size_t tokens) {
  if (tokens == 0) return;
  std::pair<Tensor, Tensor> next{key_records_, value_records_};
  std::size_t next_start = start_;
  const std::size_t needed = length_ + tokens;
  if (needed > capacity()) {
    next = resized_rings(std::max({needed, 2 * capacity(), kMinCapacity}));
    next_start = 0;
  }
  for (const auto& [input, records, kind] :
       {std::tuple{&keys, &next.first, &tables_->keys}, std::tuple{&values, &next.second, &tables_->values}}) {
    RecordEncode encode;
    encode.ring = detail::ring_of(*kind, *records, num_heads_, next_start);
    encode.first = length_;
    encode.tokens = tokens;
    encode.input = input->data();
    encode.dtype = input->dtype();
    encode.head_stride = tokens * config_.head_dim;
    encode.token_stride = config_.head_dim;
    backend_for(device_).encode_records(encode, stream_);
  }
  key_records_ = std::move(next.first);
  value_records_ = std::move(next.second);
  start_ = next_start;
  length_ = needed;
}

void CompressedHeads::reserve(std::size_t tokens) {
  if (tokens <= capacity()) return;
  std::pair<Tensor, Tensor> next = resized_rings(tokens);
  key_records_ = std::move(next.first);
  value_records_ = std::move(next.second);
  start_ = 0;
}

// Checks the rank, dims and values of `queries` [rows, head_dim], named `what`, whose row r is the query of head
// first_head + r (its dtype and device are checked already).
void CompressedHeads::validate_queries(const Tensor& queries, const char* what, std::size_t rows,
                                       std::size_t first_head, FiniteCheck check) const {
  detail::require_rank(queries, 2, what, rows == 1 ? "[1, head_dim]" : "[num_query_heads, head_dim]");
  if (queries.dim(0) != rows) {
    throw detail::dimension_mismatch(rows, queries.dim(0), fmt::format("{}: one vector per query head", what));
  }
  if (queries.dim(1) != config_.head_dim) {
    throw detail::dimension_mismatch(config_.head_dim, queries.dim(1), fmt::format("{}: head_dim", what));
  }
  if (check == FiniteCheck::Skip) return;
  const std::size_t bad =
      backend_for(device_).find_non_finite(queries.data(), queries.dtype(), queries.numel(), stream_);
  if (bad != queries.numel()) {
    throw detail::non_finite_input(bad % config_.head_dim,
                                   fmt::format("query of head {}", first_head + bad / config_.head_dim));
  }
}

RecordQuery CompressedHeads::query_of(const Tensor& queries, std::size_t group_size) const {
  RecordQuery query;
  query.keys = key_ring();
  query.tokens = length_;
  query.queries = queries.data();
  query.dtype = queries.dtype();
  query.query_heads = queries.dim(0);
  query.group_size = group_size;
  query.qjl = config_.estimator == ScoreEstimator::Qjl;
  query.inv_alpha = tables_->keys.inv_alpha;
  query.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  return query;
}

// Scores of validated queries: F32 [query_heads, len].
Tensor CompressedHeads::run_scores(const RecordQuery& query) const {
  Tensor out = Tensor::empty({query.query_heads, length_}, DType::F32, device_, stream_);
  if (length_ != 0) backend_for(device_).score_records(query, static_cast<float*>(out.mutable_data()), stream_);
  return out;
}

// Attention outputs of validated queries: F32 [query_heads, head_dim].
Tensor CompressedHeads::run_attention(const RecordQuery& query) const {
  if (length_ == 0) throw Error(ErrorCode::EmptyInput, "empty input: attention over an empty cache");
  Tensor out = Tensor::empty({query.query_heads, config_.head_dim}, DType::F32, device_, stream_);
  backend_for(device_).attend_records(query, value_ring(), static_cast<float*>(out.mutable_data()), stream_);
  return out;
}

Tensor CompressedHeads::scores(const Tensor& queries, std::size_t group_size, FiniteCheck check) const {
  check_float_tensor(queries, device_, "queries");
  check_group_size(group_size);
  validate_queries(queries, "queries", num_heads_ * group_size, 0, check);
  return run_scores(query_of(queries, group_size));
}

Tensor CompressedHeads::attention_output(const Tensor& queries, std::size_t group_size, FiniteCheck check) const {
  check_float_tensor(queries, device_, "queries");
  check_group_size(group_size);
  validate_queries(queries, "queries", num_heads_ * group_size, 0, check);
  return run_attention(query_of(queries, group_size));
}

Tensor CompressedHeads::head_scores(std::size_t head, const Tensor& query, FiniteCheck check) const {
  detail::require_index(head, num_heads_, "head", "num_heads");
  check_float_tensor(query, device_, "query");
  validate_queries(query, "query", 1, head, check);
  RecordQuery one = query_of(query, 1);
  one.keys = detail::one_head(one.keys, head);
  return run_scores(one);
}

Tensor CompressedHeads::decoded(const RecordRing& ring) const {
  Tensor out = Tensor::empty({ring.heads, length_, config_.head_dim}, DType::F32, device_, stream_);
  if (length_ != 0) {
    backend_for(device_).decode_records(ring, length_, static_cast<float*>(out.mutable_data()), stream_);
  }
  return out;
}

Tensor CompressedHeads::decode_keys() const { return decoded(key_ring()); }
Tensor CompressedHeads::decode_values() const { return decoded(value_ring()); }

Tensor CompressedHeads::decode_keys(std::size_t head) const {
  detail::require_index(head, num_heads_, "head", "num_heads");
  return decoded(detail::one_head(key_ring(), head)).select(0);
}

Tensor CompressedHeads::decode_values(std::size_t head) const {
  detail::require_index(head, num_heads_, "head", "num_heads");
  return decoded(detail::one_head(value_ring(), head)).select(0);
}

std::pair<Tensor, Tensor> CompressedHeads::records() const {
  if (length_ == 0) {
    return {Tensor::empty({num_heads_, 0, key_record_bytes()}, DType::U8, device_, stream_),
            Tensor::empty({num_heads_, 0, value_record_bytes()}, DType::U8, device_, stream_)};
  }
  return resized_rings(length_);
}

void CompressedHeads::assign_records(const Tensor& key_records, const Tensor& value_records) {
  for (const auto& [tensor, what, bytes] : {std::tuple{&key_records, "key_records", key_record_bytes()},
                                            std::tuple{&value_records, "value_records", value_record_bytes()}}) {
    if (tensor->dtype() != DType::U8 || !(tensor->device() == device_)) {
      throw Error(ErrorCode::Config, fmt::format("{}: u8 on {} expected, got {} on {}", what, device_.to_string(),
                                                 dtype_name(tensor->dtype()), tensor->device().to_string()));
    }
    if (tensor->rank() != 3 || tensor->dim(0) != num_heads_ || tensor->dim(2) != bytes) {
      throw Error(ErrorCode::Shape, fmt::format("{}: [{}, tokens, {}] expected, got {}", what, num_heads_, bytes,
                                                tensor->shape().to_string()));
    }
  }
  if (key_records.dim(1) != value_records.dim(1)) {
    throw Error(ErrorCode::Shape,
                fmt::format("{} key records and {} value records", key_records.dim(1), value_records.dim(1)));
  }
  const std::size_t tokens = key_records.dim(1);
  if (tokens == 0) {
    clear();
    return;
  }
  Tensor keys = key_records.to(device_, stream_);
  Tensor values = value_records.to(device_, stream_);
  key_records_ = std::move(keys);
  value_records_ = std::move(values);
  start_ = 0;
  length_ = tokens;
}

void CompressedHeads::keep_last(std::size_t window) noexcept {
  if (length_ <= window) return;
  start_ = (start_ + length_ - window) % capacity();
  length_ = window;
}

void CompressedHeads::clear() noexcept {
  key_records_ = Tensor();
  value_records_ = Tensor();
  start_ = 0;
  length_ = 0;
}

std::size_t CompressedHeads::key_record_bytes() const noexcept { return tables_->keys.layout.record_bytes; }
std::size_t CompressedHeads::value_record_bytes() const noexcept { return tables_->values.layout.record_bytes; }

std::size_t CompressedHeads::memory_usage() const noexcept {
  return length_ * num_heads_ * (key_record_bytes() + value_record_bytes());
}

std::size_t CompressedHeads::memory_reserved() const noexcept {
  return (key_records_.defined() ? key_records_.nbytes() : 0) +
         (value_records_.defined() ? value_records_.nbytes() : 0);
}

std::size_t CompressedHeads::table_bytes() const noexcept { return tables_->bytes(); }

double CompressedHeads::compression_ratio() const noexcept {
  if (length_ == 0) return 1.0;
  return static_cast<double>(2 * length_ * num_heads_ * config_.head_dim * sizeof(float)) /
         static_cast<double>(memory_usage());
}

}  // namespace micache
