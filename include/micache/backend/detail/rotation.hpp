// The randomised Hadamard rotation of every record: y = H D2 H D1 x / p and
// its inverse, the same additions in the same order on every backend.
// C++17: included by .cu files.
#pragma once

#include <cstdint>

#include "micache/backend/detail/rounding.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

// A randomised Hadamard transform applied twice,
//   y = H D2 H D1 x / p     (x zero-padded from dim to p),
// with H the unnormalised p x p Walsh-Hadamard matrix (H H = p I) and D1, D2
// diagonal +-1 matrices drawn at random. Each round is orthogonal
// (H / sqrt(p) is), so ||y|| = ||x|| and <Rq, Rx> = <q, x>, and it costs
// O(p log p) adds instead of a dense matrix's p^2 multiply-adds.
//
// Why two rounds: the codebook is designed for the marginal of one coordinate
// of a uniformly random direction (close to N(0,1) after scaling by sqrt(p)).
// One round maps a one-hot vector (a key with one outlier channel, the common
// case in real models) to a perfectly flat vector +-||x||/sqrt(p), whose scaled
// coordinates are all +-1: a two-point distribution, nothing like the marginal
// the codebook and the 1/(1 - D) debiasing assume. The second round turns that
// flat vector into coordinates that are each a sum of p random signs over p,
// close to Gaussian; sparse or structured inputs need both rounds, dense random
// ones do not mind.
//
// Signs are packed bits (`signs[k / 32] >> (k % 32) & 1`, set = -1): D1 is bits
// [0, p), D2 bits [p, 2p). The butterflies only add and subtract, and each round
// ends with one multiply by the constant 1/sqrt(p), so every backend that does
// the same operations in the same order gets the same bits.

/// True when sign bit k (of D1 for k < p, of D2 for p <= k < 2p) flips its coordinate.
MICACHE_HOST_DEVICE inline bool sign_is_negative(const std::uint32_t* signs, std::uint32_t k) {
  return ((signs[k >> 5] >> (k & 31u)) & 1u) != 0u;
}

/// In-place unnormalised fast Walsh-Hadamard transform of x[0..p), p a power of
/// two: stages h = 1, 2, 4, ..., p/2; in each, for every block start i (a
/// multiple of 2h) and j in [i, i+h), (x[j], x[j+h]) <- (x[j] + x[j+h], x[j] - x[j+h]).
/// O(p log p) adds.
MICACHE_HOST_DEVICE inline void fwht(float* x, std::uint32_t p) {
  for (std::uint32_t h = 1; h < p; h <<= 1) {
    for (std::uint32_t i = 0; i < p; i += 2 * h) {
      for (std::uint32_t j = i; j < i + h; ++j) {
        const float a = x[j];
        const float b = x[j + h];
        x[j] = add_rn(a, b);
        x[j + h] = add_rn(a, -b);
      }
    }
  }
}

/// The middle of both rotations, in place on y (p floats): fwht, then
/// y_i * (1/sqrt(p)) with D2's sign (bit p + i), then fwht again. O(p log p).
MICACHE_HOST_DEVICE inline void middle_rounds(float* y, const std::uint32_t* signs, std::uint32_t p) {
  const float scale = inv_sqrt_power_of_two(p);
  fwht(y, p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const float v = mul_rn(y[i], scale);
    y[i] = sign_is_negative(signs, p + i) ? -v : v;
  }
  fwht(y, p);
}

/// y = H D2 H D1 x / p: x has `dim` floats, y receives `p` floats (x zero-padded).
/// Per round: flip signs, fwht, multiply by 1/sqrt(p). O(p log p).
MICACHE_HOST_DEVICE inline void rotate(const float* x, std::uint32_t dim, float* y, const std::uint32_t* signs,
                                       std::uint32_t p) {
  for (std::uint32_t i = 0; i < p; ++i) {
    y[i] = i < dim ? (sign_is_negative(signs, i) ? -x[i] : x[i]) : 0.0f;
  }
  middle_rounds(y, signs, p);
  const float scale = inv_sqrt_power_of_two(p);
  for (std::uint32_t i = 0; i < p; ++i) {
    y[i] = mul_rn(y[i], scale);
  }
}

/// The inverse rotation x = D1 H D2 H y / p, truncated to `dim` floats.
/// `y` (p floats) is the work space and is overwritten; `x_out` may equal `y`.
/// Per round: fwht, multiply by 1/sqrt(p), flip signs. O(p log p).
MICACHE_HOST_DEVICE inline void unrotate(float* y, float* x_out, const std::uint32_t* signs, std::uint32_t p,
                                         std::uint32_t dim) {
  middle_rounds(y, signs, p);
  const float scale = inv_sqrt_power_of_two(p);
  for (std::uint32_t i = 0; i < dim; ++i) {
    const float v = mul_rn(y[i], scale);
    x_out[i] = sign_is_negative(signs, i) ? -v : v;
  }
}

}  // namespace micache::detail
