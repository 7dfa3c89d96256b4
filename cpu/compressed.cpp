#include <algorithm>
#include <vector>

#include "cpu/cpu_backend.hpp"
#include "micache/backend/detail/attend_split.hpp"
#include "micache/backend/detail/estimators.hpp"
#include "micache/backend/detail/qjl_projection.hpp"
#include "micache/backend/detail/record_codec.hpp"
#include "micache/backend/detail/rotation.hpp"

namespace micache {
namespace {

using detail::RecordLayout;

const std::uint8_t* record_at(const RecordRing& ring, std::size_t head, std::size_t token) {
  return ring.records + (head * ring.capacity + (ring.start + token) % ring.capacity) * ring.layout.record_bytes;
}

const std::uint32_t* signs_of(const RecordRing& ring, std::size_t head) { return ring.signs + head * ring.sign_words; }

// A query rotated into key head `head`'s domain and, for QJL, projected on its matrix.
struct PreparedQuery {
  std::vector<float> rotated;
  std::vector<float> projected;
};

PreparedQuery prepare(const RecordQuery& query, std::size_t q) {
  const RecordRing& keys = query.keys;
  const RecordLayout& layout = keys.layout;
  const std::size_t head = q / query.group_size;
  std::vector<float> x(layout.dim);
  for (std::size_t i = 0; i < layout.dim; ++i) x[i] = load_as_f32(query.queries, query.dtype, q * layout.dim + i);
  PreparedQuery prepared{std::vector<float>(layout.padded_dim), {}};
  detail::rotate(x.data(), layout.dim, prepared.rotated.data(), signs_of(keys, head), layout.padded_dim);
  if (query.qjl) {
    prepared.projected.resize(layout.projections);
    detail::project_query(keys.projections + head * layout.projections * layout.padded_dim, layout.projections,
                          layout.padded_dim, prepared.rotated.data(), prepared.projected.data());
  }
  return prepared;
}

// Scores of query head q against every token, into `out[0, tokens)`.
void score_head(const RecordQuery& query, std::size_t q, float* out) {
  const PreparedQuery prepared = prepare(query, q);
  const std::size_t head = q / query.group_size;
  const RecordLayout& layout = query.keys.layout;
  for (std::size_t t = 0; t < query.tokens; ++t) {
    const std::uint8_t* record = record_at(query.keys, head, t);
    const float estimate = query.qjl ? detail::estimate_qjl(record, layout, query.keys.centroids,
                                                            prepared.rotated.data(), prepared.projected.data())
                                     : detail::estimate_mse(record, layout, query.keys.centroids,
                                                            prepared.rotated.data(), query.inv_alpha);
    out[t] = estimate * query.scale;
  }
}

}  // namespace

// Memory access: each vector is read once and its record written once; the
// quantiser tables stay in cache across vectors.
void CpuBackend::encode_records(const RecordEncode& encode, Stream stream) {
  require_live(stream);
  const RecordRing& ring = encode.ring;
  const RecordLayout& layout = ring.layout;
  std::vector<float> x(layout.dim);
  std::vector<float> scratch(2 * layout.padded_dim);
  for (std::size_t h = 0; h < ring.heads; ++h) {
    const float* projections =
        layout.projections > 0 ? ring.projections + h * layout.projections * layout.padded_dim : nullptr;
    for (std::size_t t = 0; t < encode.tokens; ++t) {
      const std::size_t base = h * encode.head_stride + t * encode.token_stride;
      for (std::size_t i = 0; i < layout.dim; ++i) x[i] = load_as_f32(encode.input, encode.dtype, base + i);
      auto* record = const_cast<std::uint8_t*>(record_at(ring, h, encode.first + t));
      detail::encode_record(x.data(), layout, signs_of(ring, h), ring.centroids, ring.boundaries, projections,
                            scratch.data(), record);
    }
  }
}

// Memory access: one pass over each key head's records per query head.
void CpuBackend::score_records(const RecordQuery& query, float* scores, Stream stream) {
  require_live(stream);
  for (std::size_t q = 0; q < query.query_heads; ++q) score_head(query, q, scores + q * query.tokens);
}

// Memory access: one pass over the key records (scores), then one over the
// value records, accumulating centroid * weight in the rotated domain chunk
// by chunk (detail/attend_split.hpp, the CUDA kernels' split), the chunks
// combined in order; one inverse rotation per query head at the end.
void CpuBackend::attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream stream) {
  require_live(stream);
  const RecordLayout& layout = values.layout;
  const std::size_t p = layout.padded_dim;
  const std::size_t chunks = detail::attend_chunks(query.tokens);
  const std::size_t stride = detail::attend_partial_floats(p);
  std::vector<float> scores(query.tokens);
  std::vector<float> partials(chunks * stride);
  std::vector<float> accumulator(p);
  for (std::size_t q = 0; q < query.query_heads; ++q) {
    const std::size_t head = q / query.group_size;
    score_head(query, q, scores.data());
    for (std::size_t c = 0; c < chunks; ++c) {
      const std::size_t begin = c * detail::kAttendChunkTokens;
      const std::size_t end = std::min(query.tokens, begin + detail::kAttendChunkTokens);
      float* partial = partials.data() + c * stride;
      const float max_score = *std::max_element(scores.begin() + static_cast<std::ptrdiff_t>(begin),
                                                scores.begin() + static_cast<std::ptrdiff_t>(end));
      float* acc = partial + 2;
      std::fill(acc, acc + p, 0.0f);
      float total = 0.0f;
      for (std::size_t t = begin; t < end; ++t) {
        const float weight = detail::exp_f32(scores[t] - max_score);
        total += weight;
        const std::uint8_t* record = record_at(values, head, t);
        const float scaled = weight * detail::load_f32(record + layout.norm_offset);
        for (std::size_t i = 0; i < p; ++i) {
          acc[i] += scaled * values.centroids[detail::unpack_code(record, static_cast<std::uint32_t>(i), layout.bits)];
        }
      }
      partial[0] = max_score;
      partial[1] = total;
    }
    const float max_score = detail::attend_max(partials.data(), chunks, stride);
    const float finish = detail::inv_sqrt_power_of_two(layout.padded_dim) /
                         detail::attend_total(partials.data(), chunks, stride, max_score);
    for (std::size_t i = 0; i < p; ++i) {
      accumulator[i] = detail::attend_coordinate(partials.data(), chunks, stride, max_score, i) * finish;
    }
    detail::unrotate(accumulator.data(), out + q * layout.dim, signs_of(values, head), layout.padded_dim, layout.dim);
  }
}

void CpuBackend::decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream stream) {
  require_live(stream);
  std::vector<float> scratch(ring.layout.padded_dim);
  for (std::size_t h = 0; h < ring.heads; ++h) {
    for (std::size_t t = 0; t < tokens; ++t) {
      detail::decode_record(record_at(ring, h, t), ring.layout, signs_of(ring, h), ring.centroids, scratch.data(),
                            out + (h * tokens + t) * ring.layout.dim);
    }
  }
}

}  // namespace micache
