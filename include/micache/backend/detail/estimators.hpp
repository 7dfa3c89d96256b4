// Score estimates of a query against key records: the MSE estimate from the
// codes and bitpolar's QJL-corrected one, both from a query prepared once.
// C++17: included by .cu files.
#pragma once

#include <cstdint>

#include "micache/backend/detail/record_layout.hpp"
#include "micache/backend/detail/rounding.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

// The query is prepared once: qr = rotate(q) (p floats, rotation.hpp) and, for
// QJL, qs_j = <S_j, qr> (m floats, qjl_projection.hpp), both bit for bit on
// every backend. Then every key costs O(p) (plus O(m) for QJL) instead of a
// rotation. nvcc may fuse the multiply-adds below into FMAs: scores agree
// across backends to a tolerance, not bit for bit.

/// Sum over i of qr_i * centroids[code_i] as four partial sums s_k over
/// i = k mod 4 (each in ascending i), combined as (s0 + s1) + (s2 + s3); for
/// p < 4, s0 takes every term. Four independent chains let a CPU pipeline the
/// adds and a GPU thread overlap its loads; 4-bit codes are read a byte (two
/// codes) at a time. Every backend calls this function. O(p).
MICACHE_HOST_DEVICE inline float centroid_dot(const std::uint8_t* record, const RecordLayout& layout,
                                              const float* centroids, const float* rotated_query) {
  const std::uint32_t p = layout.padded_dim;
  const float* q = rotated_query;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  std::uint32_t i = 0;
  if (layout.bits == 4u) {
    for (; i + 4u <= p; i += 4u) {
      const std::uint32_t low = record[i >> 1];
      const std::uint32_t high = record[(i >> 1) + 1u];
      s0 += q[i] * centroids[low & 15u];
      s1 += q[i + 1u] * centroids[low >> 4];
      s2 += q[i + 2u] * centroids[high & 15u];
      s3 += q[i + 3u] * centroids[high >> 4];
    }
  } else {
    for (; i + 4u <= p; i += 4u) {
      s0 += q[i] * centroids[unpack_code(record, i, layout.bits)];
      s1 += q[i + 1u] * centroids[unpack_code(record, i + 1u, layout.bits)];
      s2 += q[i + 2u] * centroids[unpack_code(record, i + 2u, layout.bits)];
      s3 += q[i + 3u] * centroids[unpack_code(record, i + 3u, layout.bits)];
    }
  }
  for (; i < p; ++i) {
    s0 += q[i] * centroids[unpack_code(record, i, layout.bits)];
  }
  return (s0 + s1) + (s2 + s3);
}

/// estimate_mse from its parts: the record's norm and the sum over i of
/// qr_i * centroids[code_i] (centroid_dot, or any order of it). O(1).
MICACHE_HOST_DEVICE inline float mse_from_dot(float norm, float dot, const RecordLayout& layout, float inv_alpha) {
  return norm * (inv_alpha * inv_sqrt_power_of_two(layout.padded_dim)) * dot;
}

/// s_j of estimate_qjl: true (+1) when sign bit j of `record` is set. O(1).
MICACHE_HOST_DEVICE inline bool qjl_sign_positive(const std::uint8_t* record, const RecordLayout& layout,
                                                  std::uint32_t j) {
  return ((record[layout.sign_offset + j / 8u] >> (j % 8u)) & 1u) != 0u;
}

/// estimate_qjl from its parts: the record's norm and residual norm, the
/// centroid dot product and the sketch sum_j s_j qs_j. O(1).
MICACHE_HOST_DEVICE inline float qjl_from_parts(float norm, float dot, float residual_norm, float sketch,
                                                const RecordLayout& layout) {
  const float sqrt_half_pi = 1.25331413731550025f;
  const float correction = residual_norm * (sqrt_half_pi / static_cast<float>(layout.projections)) * sketch;
  return norm * (inv_sqrt_power_of_two(layout.padded_dim) * dot + correction);
}

/// Estimate of <q, x> from x's record: norm * inv_alpha * sum_i qr_i * centroids[code_i] / sqrt(p),
/// with inv_alpha = 1 / (1 - D), D the codebook's distortion. O(p).
///
/// Why 1 / (1 - D): write t for a scaled rotated coordinate and Q(t) for its
/// centroid. Lloyd-Max centroids are conditional means, Q(t) = E[t | code], so
/// E[Q(t) t] = E[Q(t)^2] = E[t^2] - D = 1 - D. Split qr = a y + w with w
/// orthogonal to y; over a uniformly random rotation E[w | y] = 0, hence
/// E[<qr, y_hat>] = a E[<y, y_hat>] = a ||x||^2 (1 - D) = (1 - D) <q, x>: the plain
/// reconstruction's inner product is shrunk by 1 - D (2/pi at 1 bit, 0.99 at 4).
/// Dividing by it makes the estimate unbiased at zero cost (the caller folds it
/// into the query scale), at the price of a variance larger by 1/(1 - D)^2.
MICACHE_HOST_DEVICE inline float estimate_mse(const std::uint8_t* record, const RecordLayout& layout,
                                              const float* centroids, const float* rotated_query, float inv_alpha) {
  return mse_from_dot(load_f32(record + layout.norm_offset), centroid_dot(record, layout, centroids, rotated_query),
                      layout, inv_alpha);
}

/// bitpolar's QJL-corrected estimate of <q, x> from a key record (m > 0):
/// norm * (sum_i qr_i * centroids[code_i] / sqrt(p) + residual_norm * sqrt(pi/2) / m * sum_j s_j qs_j),
/// s_j = +1 when sign bit j is set (<S_j, r> >= 0), else -1. O(p + m).
///
/// For S_j ~ N(0, I), E[sign(<S_j, r>) <S_j, v>] = sqrt(2/pi) <r, v> / ||r||, so
/// the second term is an unbiased estimate of <qr, r>, the part of <qr, y/||x||>
/// the codes miss. Its variance, about (pi/2) ||r||^2 ||q||^2 / m, exceeds that of
/// the error it corrects (about ||r||^2 ||q||^2 / p) whenever m < (pi/2) p.
MICACHE_HOST_DEVICE inline float estimate_qjl(const std::uint8_t* record, const RecordLayout& layout,
                                              const float* centroids, const float* rotated_query,
                                              const float* projected_query) {
  float sketch = 0.0f;
  for (std::uint32_t j = 0; j < layout.projections; ++j) {
    sketch += qjl_sign_positive(record, layout, j) ? projected_query[j] : -projected_query[j];
  }
  return qjl_from_parts(load_f32(record + layout.norm_offset), centroid_dot(record, layout, centroids, rotated_query),
                        load_f32(record + layout.residual_norm_offset), sketch, layout);
}

}  // namespace micache::detail
