// The projection of a rotated query on a QJL matrix, qs_j = <S_j, qr>, in
// the order one warp per row computes it, so that every backend gets the
// same bits: lane l (of 32) sums the products of elements l, l + 32, ... in
// ascending order, then the 32 lane sums combine by an xor butterfly of
// widths 16, 8, 4, 2, 1 (cuda/common.cuh's warp_sum). The CUDA prepare kernel
// calls lane_partial_dot and warp_sum; the host calls project_query, which
// evaluates the same tree.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/backend/detail/rounding.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

/// Lanes of the warp whose order the projection follows.
inline constexpr std::uint32_t kProjectionLanes = 32;

/// Lane `lane`'s part of <row, x> over n elements: the products of elements
/// lane, lane + 32, ... added in ascending order, each product and each sum
/// rounded once (no FMA). O(n / 32).
MICACHE_HOST_DEVICE inline float lane_partial_dot(const float* row, const float* x, std::uint32_t n,
                                                  std::uint32_t lane) {
  float sum = 0.0f;
  for (std::uint32_t i = lane; i < n; i += kProjectionLanes) sum = add_rn(sum, mul_rn(row[i], x[i]));
  return sum;
}

/// The sum of the 32 lane partials as warp_sum's xor butterfly gives it: at
/// width w (16, 8, 4, 2, 1) every lane l adds lane l ^ w's value to its own.
/// Lanes l and l ^ w then hold the same value (addition commutes), so lanes
/// l < w carry every value the next step reads: each step adds
/// partials[l + w] into partials[l] for l < w, and partials[0] ends as every
/// lane's result. Overwrites `partials`. 31 adds.
MICACHE_HOST_DEVICE inline float butterfly_sum(float* partials) {
  for (std::uint32_t width = kProjectionLanes / 2; width > 0; width >>= 1) {
    for (std::uint32_t l = 0; l < width; ++l) partials[l] = add_rn(partials[l], partials[l + width]);
  }
  return partials[0];
}

/// <row, x> over n elements as a warp computes it: the 32 lane partials,
/// then butterfly_sum. O(n).
MICACHE_HOST_DEVICE inline float warp_order_dot(const float* row, const float* x, std::uint32_t n) {
  float partials[kProjectionLanes];
  for (std::uint32_t lane = 0; lane < kProjectionLanes; ++lane) partials[lane] = lane_partial_dot(row, x, n, lane);
  return butterfly_sum(partials);
}

/// projected[j] = warp_order_dot(S_j, rotated, p) for the m rows S_j of
/// `matrix` (m x p, row-major): the QJL part of a prepared query. O(m p).
MICACHE_HOST_DEVICE inline void project_query(const float* matrix, std::uint32_t m, std::uint32_t p,
                                              const float* rotated, float* projected) {
  for (std::uint32_t j = 0; j < m; ++j) projected[j] = warp_order_dot(matrix + std::size_t{j} * p, rotated, p);
}

}  // namespace micache::detail
