// Encoding a vector into its record and decoding it back: the per-vector
// math every backend runs step for step (the CUDA kernels through
// parallel_record.hpp), so that records and decodes match bit for bit.
// C++17: included by .cu files.
#pragma once

#include <cstdint>

#include "micache/backend/detail/record_layout.hpp"
#include "micache/backend/detail/rotation.hpp"
#include "micache/backend/detail/rounding.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

/// Sum of v[0..n), n a power of two, as a balanced tree: first v[2i] + v[2i+1]
/// for every i, then the same on the n/2 partial sums, and so on (a warp does
/// the same with xor-shuffles 1, 2, 4, ... over consecutive elements).
/// Overwrites v. O(n).
MICACHE_HOST_DEVICE inline float tree_sum(float* v, std::uint32_t n) {
  for (std::uint32_t width = n; width > 1u; width >>= 1) {
    for (std::uint32_t i = 0; i < width / 2u; ++i) {
      v[i] = add_rn(v[2u * i], v[2u * i + 1u]);
    }
  }
  return v[0];
}

/// Code of the unit-scale coordinate t: the number of `boundaries` <= t
/// (`levels - 1` ascending boundaries, levels a power of two), by binary
/// lifting: log2(levels) steps with no data-dependent branch. NaN gets code 0.
MICACHE_HOST_DEVICE inline std::uint32_t bucket(float t, const float* boundaries, std::uint32_t levels) {
  std::uint32_t code = 0;
  for (std::uint32_t step = levels >> 1; step > 0u; step >>= 1) {
    code += boundaries[code + step - 1u] <= t ? step : 0u;
  }
  return code;
}

/// Encodes x (`layout.dim` floats) into `record` (`layout.record_bytes` bytes,
/// fully written).
///
/// - norm = sqrt(tree_sum(x_i^2)) over the p zero-padded values (summed on x * 2^shift, then scaled back);
/// - y = rotate(x); t_i = y_i * (sqrt(p) / norm) (about N(0,1)); code_i = bucket(t_i);
/// - residual r_i = y_i * (1 / norm) - centroids[code_i] * (1 / sqrt(p)) (unit-scale
///   rotated space), residual_norm = sqrt(tree_sum(r_i^2));
/// - sign bit j = tree_sum(S_ji * r_i) >= 0, S_j row j of `projection_matrix`
///   (m x p, row-major; may be null when m == 0).
/// A zero vector gets every code equal to bucket(0), norm 0, residual norm 0 and
/// no sign bits. Any finite x encodes: the sums run on x scaled by a power of two
/// (see below); only the stored norm saturates to infinity when ||x|| exceeds
/// FLT_MAX. Preconditions: x finite; `centroids` has 2^bits entries and `boundaries`
/// 2^bits - 1; `signs` 2p bits; `scratch` 2p floats. O(p log p + m p).
MICACHE_HOST_DEVICE inline void encode_record(const float* x, const RecordLayout& layout, const std::uint32_t* signs,
                                              const float* centroids, const float* boundaries,
                                              const float* projection_matrix, float* scratch, std::uint8_t* record) {
  const std::uint32_t p = layout.padded_dim;
  const std::uint32_t levels = 1u << layout.bits;
  float* y = scratch;
  float* work = scratch + p;
  for (std::uint32_t b = 0; b < layout.record_bytes; ++b) {
    record[b] = 0;
  }
  // Work on x * 2^shift, max |x_i| scaled into [1, 2): the scaling is exact
  // and every step below is scale-equivariant, so codes, residuals and sign
  // bits are those of x itself, while ||x||^2 and the rotation's sums can
  // neither overflow (|x_i| near FLT_MAX) nor underflow (subnormal x).
  float largest = 0.0f;
  for (std::uint32_t i = 0; i < layout.dim; ++i) {
    const float magnitude = x[i] < 0.0f ? -x[i] : x[i];
    largest = magnitude > largest ? magnitude : largest;
  }
  if (largest == 0.0f) {
    const std::uint32_t zero_code = bucket(0.0f, boundaries, levels);
    for (std::uint32_t i = 0; i < p; ++i) {
      pack_code(record, i, layout.bits, zero_code);
    }
    return;
  }
  const int shift = 1 - binary_exponent(largest);
  const PowerOfTwoScale scale(shift);
  for (std::uint32_t i = 0; i < p; ++i) {
    work[i] = i < layout.dim ? scale(x[i]) : 0.0f;
  }
  rotate(work, layout.dim, y, signs, p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const float scaled = i < layout.dim ? scale(x[i]) : 0.0f;
    work[i] = mul_rn(scaled, scaled);
  }
  const float norm = sqrt_rn(tree_sum(work, p));  // of x * 2^shift
  store_f32(record + layout.norm_offset, PowerOfTwoScale(-shift)(norm));
  const float t_scale = div_rn(sqrt_power_of_two(p), norm);
  const float inv_norm = div_rn(1.0f, norm);
  const float inv_sqrt_p = inv_sqrt_power_of_two(p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const std::uint32_t code = bucket(mul_rn(y[i], t_scale), boundaries, levels);
    pack_code(record, i, layout.bits, code);
    y[i] = add_rn(mul_rn(y[i], inv_norm), -mul_rn(centroids[code], inv_sqrt_p));
  }
  if (layout.projections == 0) {
    return;
  }
  for (std::uint32_t i = 0; i < p; ++i) {
    work[i] = mul_rn(y[i], y[i]);
  }
  store_f32(record + layout.residual_norm_offset, sqrt_rn(tree_sum(work, p)));
  for (std::uint32_t j = 0; j < layout.projections; ++j) {
    const float* row = projection_matrix + static_cast<std::size_t>(j) * p;
    for (std::uint32_t i = 0; i < p; ++i) {
      work[i] = mul_rn(row[i], y[i]);
    }
    if (tree_sum(work, p) >= 0.0f) {
      std::uint8_t& byte = record[layout.sign_offset + j / 8u];
      byte = static_cast<std::uint8_t>(byte | (1u << (j % 8u)));
    }
  }
}

/// Decodes a record into `out` (`layout.dim` floats), the MSE-optimal
/// reconstruction (the QJL part plays no role):
/// out = unrotate(centroids[code_i] * (norm * (1 / sqrt(p)))). `scratch` holds p floats.
/// O(p log p).
MICACHE_HOST_DEVICE inline void decode_record(const std::uint8_t* record, const RecordLayout& layout,
                                              const std::uint32_t* signs, const float* centroids, float* scratch,
                                              float* out) {
  const std::uint32_t p = layout.padded_dim;
  const float scale = mul_rn(load_f32(record + layout.norm_offset), inv_sqrt_power_of_two(p));
  for (std::uint32_t i = 0; i < p; ++i) {
    scratch[i] = mul_rn(centroids[unpack_code(record, i, layout.bits)], scale);
  }
  unrotate(scratch, out, signs, p, layout.dim);
}

}  // namespace micache::detail
