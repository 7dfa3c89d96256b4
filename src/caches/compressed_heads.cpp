#include "micache/compressed_heads.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <tuple>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/caches/host_rows.hpp"
#include "src/quant/vector_quantizer.hpp"
#include "src/core/ring_copy.hpp"

namespace micache {
namespace {

constexpr std::size_t kMinCapacity = 16;

// A quantiser's codebook tables, concatenated per head, on the device.
struct KindTables {
  detail::RecordLayout layout{};
  Tensor signs;  // I32 [heads, sign_words]: the rotation sign bits, as words
  std::size_t sign_words = 0;
  Tensor centroids;    // F32 [2^bits]
  Tensor boundaries;   // F32 [2^bits - 1]
  Tensor projections;  // F32 [heads, m, p]; undefined for values
  float inv_alpha = 1.0f;

  std::size_t bytes() const noexcept {
    return signs.nbytes() + centroids.nbytes() + boundaries.nbytes() +
           (projections.defined() ? projections.nbytes() : 0);
  }
};

KindTables make_tables(std::size_t heads, const KvCacheConfig& config, unsigned bits, bool keys, Device device,
                       Stream stream) {
  std::vector<std::int32_t> signs;
  std::vector<float> projections;
  KindTables tables;
  for (std::size_t h = 0; h < heads; ++h) {
    const detail::VectorQuantizer quantizer(static_cast<std::uint32_t>(config.head_dim), bits,
                                            keys ? static_cast<std::uint32_t>(config.projections) : 0u, config.seed,
                                            2 * h + (keys ? 0 : 1));
    for (const std::uint32_t word : quantizer.rotation_signs()) signs.push_back(static_cast<std::int32_t>(word));
    projections.insert(projections.end(), quantizer.projection_matrix().begin(), quantizer.projection_matrix().end());
    if (h == 0) {
      tables.layout = quantizer.layout();
      tables.sign_words = quantizer.rotation_signs().size();
      tables.inv_alpha = quantizer.inv_alpha();
      tables.centroids = Tensor::from_host(quantizer.codebook().centroids, {quantizer.codebook().centroids.size()},
                                           DType::F32, device, stream);
      tables.boundaries = Tensor::from_host(quantizer.codebook().boundaries, {quantizer.codebook().boundaries.size()},
                                            DType::F32, device, stream);
    }
  }
  tables.signs = Tensor::from_host_i32(signs, {heads, tables.sign_words}, device, stream);
  if (keys) {
    tables.projections = Tensor::from_host(projections, {heads, config.projections, tables.layout.padded_dim},
                                           DType::F32, device, stream);
  }
  return tables;
}

RecordRing ring_of(const KindTables& tables, const Tensor& records, std::size_t heads, std::size_t start) {
  RecordRing ring;
  ring.layout = tables.layout;
  ring.records = records.defined() ? static_cast<std::uint8_t*>(const_cast<void*>(records.data())) : nullptr;
  ring.heads = heads;
  ring.capacity = records.defined() ? records.dim(1) : 0;
  ring.start = start;
  ring.signs = static_cast<const std::uint32_t*>(tables.signs.data());
  ring.sign_words = tables.sign_words;
  ring.centroids = static_cast<const float*>(tables.centroids.data());
  ring.boundaries = static_cast<const float*>(tables.boundaries.data());
  ring.projections = tables.projections.defined() ? static_cast<const float*>(tables.projections.data()) : nullptr;
  return ring;
}

// Ring `ring` narrowed to its head `head` (for one-head queries).
RecordRing one_head(RecordRing ring, std::size_t head) {
  ring.records += head * ring.capacity * ring.layout.record_bytes;
  ring.signs += head * ring.sign_words;
  if (ring.projections != nullptr) ring.projections += head * ring.layout.projections * ring.layout.padded_dim;
  ring.heads = 1;
  return ring;
}

std::string non_finite_message(std::size_t index, const std::string& where) {
  return fmt::format("input contains non-finite values (NaN or Inf) at index {} ({})", index, where);
}

std::string mismatch_message(std::size_t expected, std::size_t actual, const std::string& where) {
  return fmt::format("dimension mismatch: quantizer expects {}, got {} ({})", expected, actual, where);
}

void check_float_tensor(const Tensor& t, Device device, const char* what) {
  if (!t.defined()) throw Error(ErrorCode::Config, fmt::format("{}: undefined tensor", what));
  if (!is_float_dtype(t.dtype())) {
    throw Error(ErrorCode::Config, fmt::format("{} must be f32, f16 or bf16, got {}", what, dtype_name(t.dtype())));
  }
  if (!(t.device() == device)) {
    throw Error(ErrorCode::Config,
                fmt::format("{} on {}, the cache on {}", what, t.device().to_string(), device.to_string()));
  }
}

}  // namespace

struct CompressedHeads::Tables {
  KindTables keys;
  KindTables values;
};

CompressedHeads::CompressedHeads(std::size_t num_heads, const KvCacheConfig& config, Device device, Stream stream)
    : num_heads_(num_heads), config_(config), device_(device), stream_(stream) {
  if (num_heads == 0) throw Error(ErrorCode::EmptyInput, "empty input: num_heads must be > 0");
  config.validate();
  backend_for(device);  // fails early for an unusable device
  try {
    auto tables = std::make_shared<Tables>();
    tables->keys = make_tables(num_heads, config, config.bits, true, device, stream);
    tables->values = make_tables(num_heads, config, config.value_bits != 0 ? config.value_bits : config.bits, false,
                                 device, stream);
    tables_ = std::move(tables);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::OutOfMemory,
                fmt::format("the host cannot hold the tables of {} heads (head_dim {}, {} projections)", num_heads,
                            config.head_dim, config.projections));
  }
}

RecordRing CompressedHeads::key_ring() const { return ring_of(tables_->keys, key_records_, num_heads_, start_); }
RecordRing CompressedHeads::value_ring() const { return ring_of(tables_->values, value_records_, num_heads_, start_); }

void CompressedHeads::validate_host_vectors(const std::vector<std::vector<float>>& vectors, std::size_t expected_count,
                                            const char* what, const char* per_vector, std::size_t first_head) const {
  if (vectors.size() != expected_count) {
    throw Error(ErrorCode::DimensionMismatch,
                mismatch_message(expected_count, vectors.size(), fmt::format("{}: one vector per head", what)));
  }
  for (std::size_t h = 0; h < vectors.size(); ++h) {
    if (vectors[h].size() != config_.head_dim) {
      throw Error(ErrorCode::DimensionMismatch, mismatch_message(config_.head_dim, vectors[h].size(),
                                                                 fmt::format("{} {}", per_vector, first_head + h)));
    }
  }
  for (std::size_t h = 0; h < vectors.size(); ++h) {
    const auto bad = std::find_if(vectors[h].begin(), vectors[h].end(), [](float v) { return !std::isfinite(v); });
    if (bad != vectors[h].end()) {
      throw Error(ErrorCode::NonFiniteInput, non_finite_message(static_cast<std::size_t>(bad - vectors[h].begin()),
                                                                fmt::format("{} {}", per_vector, first_head + h)));
    }
  }
}

Tensor CompressedHeads::upload(const std::vector<std::vector<float>>& vectors) const {
  std::vector<float> flat;
  flat.reserve(vectors.size() * config_.head_dim);
  for (const std::vector<float>& v : vectors) flat.insert(flat.end(), v.begin(), v.end());
  return Tensor::from_host(flat, {vectors.size(), config_.head_dim}, DType::F32, device_, stream_);
}

void CompressedHeads::push_token(const std::vector<std::vector<float>>& keys,
                                 const std::vector<std::vector<float>>& values) {
  validate_host_vectors(keys, num_heads_, "keys", "keys of head");
  validate_host_vectors(values, num_heads_, "values", "values of head");
  append_encoded(upload(keys), upload(values), 1);
}

void CompressedHeads::push(const Tensor& keys, const Tensor& values) {
  Backend& backend = backend_for(device_);
  for (const auto& [tensor, what] : {std::pair{&keys, "keys"}, std::pair{&values, "values"}}) {
    check_float_tensor(*tensor, device_, what);
    if (tensor->rank() != 2 && tensor->rank() != 3) {
      throw Error(ErrorCode::Shape,
                  fmt::format("{} must be [num_heads, head_dim] or [num_heads, tokens, head_dim], got {}", what,
                              tensor->shape().to_string()));
    }
    const std::size_t heads = tensor->dim(0);
    const std::size_t dim = tensor->dim(tensor->rank() - 1);
    if (heads != num_heads_) {
      throw Error(ErrorCode::DimensionMismatch, mismatch_message(num_heads_, heads, fmt::format("{}: heads", what)));
    }
    if (dim != config_.head_dim) {
      throw Error(ErrorCode::DimensionMismatch,
                  mismatch_message(config_.head_dim, dim, fmt::format("{}: head_dim", what)));
    }
  }
  if (keys.shape() != values.shape()) {
    throw Error(ErrorCode::Shape, fmt::format("keys {} and values {} differ in shape", keys.shape().to_string(),
                                              values.shape().to_string()));
  }
  const std::size_t tokens = keys.rank() == 3 ? keys.dim(1) : 1;
  for (const auto& [tensor, what] : {std::pair{&keys, "keys"}, std::pair{&values, "values"}}) {
    const std::size_t bad = backend.find_non_finite(tensor->data(), tensor->dtype(), tensor->numel(), stream_);
    if (bad != tensor->numel()) {
      const std::size_t per_head = tokens * config_.head_dim;
      throw Error(
          ErrorCode::NonFiniteInput,
          non_finite_message(bad % config_.head_dim, fmt::format("{} of head {}, token {}", what, bad / per_head,
                                                                 (bad % per_head) / config_.head_dim)));
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
    encode.ring = ring_of(*kind, *records, num_heads_, next_start);
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

void CompressedHeads::check_group_size(std::size_t group_size) {
  if (group_size == 0) throw Error(ErrorCode::Config, "group_size must be > 0");
}

void CompressedHeads::validate_queries(const Tensor& queries, std::size_t group_size) const {
  check_float_tensor(queries, device_, "queries");
  check_group_size(group_size);
  if (queries.rank() != 2) {
    throw Error(ErrorCode::Shape,
                fmt::format("queries must be [num_query_heads, head_dim], got {}", queries.shape().to_string()));
  }
  if (queries.dim(0) != num_heads_ * group_size) {
    throw Error(ErrorCode::DimensionMismatch,
                mismatch_message(num_heads_ * group_size, queries.dim(0), "queries: one vector per query head"));
  }
  if (queries.dim(1) != config_.head_dim) {
    throw Error(ErrorCode::DimensionMismatch, mismatch_message(config_.head_dim, queries.dim(1), "queries: head_dim"));
  }
  const std::size_t bad =
      backend_for(device_).find_non_finite(queries.data(), queries.dtype(), queries.numel(), stream_);
  if (bad != queries.numel()) {
    throw Error(ErrorCode::NonFiniteInput,
                non_finite_message(bad % config_.head_dim, fmt::format("query of head {}", bad / config_.head_dim)));
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

Tensor CompressedHeads::scores(const Tensor& queries, std::size_t group_size) const {
  validate_queries(queries, group_size);
  return run_scores(query_of(queries, group_size));
}

Tensor CompressedHeads::attention_output(const Tensor& queries, std::size_t group_size) const {
  validate_queries(queries, group_size);
  return run_attention(query_of(queries, group_size));
}

// The host forms validate on the host, so the uploaded queries skip the device finiteness check.
std::vector<std::vector<float>> CompressedHeads::attention_scores(const std::vector<std::vector<float>>& queries,
                                                                  std::size_t group_size) const {
  check_group_size(group_size);
  validate_host_vectors(queries, num_heads_ * group_size, "queries", "query of head");
  const Tensor uploaded = upload(queries);
  return detail::host_rows(run_scores(query_of(uploaded, group_size)));
}

std::vector<std::vector<float>> CompressedHeads::attention_outputs(const std::vector<std::vector<float>>& queries,
                                                                   std::size_t group_size) const {
  check_group_size(group_size);
  validate_host_vectors(queries, num_heads_ * group_size, "queries", "query of head");
  const Tensor uploaded = upload(queries);
  return detail::host_rows(run_attention(query_of(uploaded, group_size)));
}

std::vector<float> CompressedHeads::head_scores(std::size_t head, const std::vector<float>& query) const {
  check_head(head);
  validate_host_vectors({query}, 1, "query", "query of head", head);
  const Tensor uploaded = upload({query});
  RecordQuery one = query_of(uploaded, 1);
  one.keys = one_head(one.keys, head);
  one.query_heads = 1;
  return run_scores(one).to_host_f32();
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

const CompressedHeads& CompressedHeads::check_head(std::size_t head) const {
  if (head >= num_heads_) {
    throw Error(ErrorCode::Hook, fmt::format("head {} out of range (num_heads={})", head, num_heads_));
  }
  return *this;
}

Tensor CompressedHeads::decode_keys(std::size_t head) const {
  return check_head(head).decoded(one_head(key_ring(), head)).select(0);
}

Tensor CompressedHeads::decode_values(std::size_t head) const {
  return check_head(head).decoded(one_head(value_ring(), head)).select(0);
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
    throw Error(ErrorCode::Shape, fmt::format("{} key records and {} value records", key_records.dim(1),
                                              value_records.dim(1)));
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

std::size_t CompressedHeads::table_bytes() const noexcept { return tables_->keys.bytes() + tables_->values.bytes(); }

double CompressedHeads::compression_ratio() const noexcept {
  if (length_ == 0) return 1.0;
  return static_cast<double>(2 * length_ * num_heads_ * config_.head_dim * sizeof(float)) /
         static_cast<double>(memory_usage());
}

}  // namespace micache
