// Flash-decoding's split of attend_records, shared by every backend: the
// tokens are cut into chunks of kAttendChunkTokens; each chunk keeps its own
// softmax state (max score, sum of exp(score - max), weighted value sums in
// the rotated domain), and the chunks are then combined in chunk order. The
// CPU runs the same split and the same combine, so backends differ only by
// the rounding of exp and of fused multiply-adds.
// C++17: included by .cu files.
#pragma once

#include <cstddef>

#include "micache/backend/detail/rounding.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

/// Tokens per chunk of attend_records: one CUDA block of 256 threads, one token each.
inline constexpr std::size_t kAttendChunkTokens = 256;

/// Chunks of `tokens` tokens (tokens >= 1).
MICACHE_HOST_DEVICE constexpr std::size_t attend_chunks(std::size_t tokens) {
  return (tokens + kAttendChunkTokens - 1) / kAttendChunkTokens;
}

/// Floats of one chunk's partial state for p rotated coordinates: [max, sum, acc_0 .. acc_{p-1}].
MICACHE_HOST_DEVICE constexpr std::size_t attend_partial_floats(std::size_t p) { return p + 2; }

/// The largest chunk maximum: partials[c * stride] for c < chunks, in chunk order.
MICACHE_HOST_DEVICE inline float attend_max(const float* partials, std::size_t chunks, std::size_t stride) {
  float m = partials[0];
  for (std::size_t c = 1; c < chunks; ++c) {
    const float v = partials[c * stride];
    m = v > m ? v : m;
  }
  return m;
}

/// Softmax denominator: sum over chunks, in order, of sum_c * e^(max_c - max).
MICACHE_HOST_DEVICE inline float attend_total(const float* partials, std::size_t chunks, std::size_t stride,
                                              float max) {
  float total = 0.0f;
  for (std::size_t c = 0; c < chunks; ++c) total += partials[c * stride + 1] * exp_f32(partials[c * stride] - max);
  return total;
}

/// Rotated coordinate i of the unnormalised output: sum over chunks, in
/// order, of acc_c,i * e^(max_c - max).
MICACHE_HOST_DEVICE inline float attend_coordinate(const float* partials, std::size_t chunks, std::size_t stride,
                                                   float max, std::size_t i) {
  float sum = 0.0f;
  for (std::size_t c = 0; c < chunks; ++c) sum += partials[c * stride + 2 + i] * exp_f32(partials[c * stride] - max);
  return sum;
}

}  // namespace micache::detail
