// The record math of record_codec.hpp and rotation.hpp split into steps
// that a group of threads (a warp or a block) runs together and still gets
// the bits of the sequential functions: the same butterflies, the same tree
// of additions, the same codes, only spread over ranks. A step for `rank` of
// `ranks` does the elements rank, rank + ranks, ...; callers synchronise the
// group between steps. With ranks = 1 each step is the sequential loop, which
// is how the host tests check them against the sequential functions.
// C++17: included by .cu files.
#pragma once

#include <cstdint>

#include "micache/backend/detail/record_layout.hpp"
#include "micache/backend/detail/rotation.hpp"
#include "micache/backend/detail/rounding.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

/// Index of the first element of butterfly b (0 <= b < p/2) in the fwht stage
/// of half-width h (a power of two): blocks of 2h, b's block is b / h, its
/// offset b % h. The pair is (i, i + h). O(1), no division.
MICACHE_HOST_DEVICE constexpr std::uint32_t butterfly_first(std::uint32_t b, std::uint32_t h) {
  return ((b & ~(h - 1u)) << 1) | (b & (h - 1u));
}

/// The butterflies of rank `rank` in fwht's stage h: the same (a + b, a - b)
/// as detail::fwht on disjoint pairs, so any split of the stage over ranks
/// gives fwht's bits once every rank has run it.
MICACHE_HOST_DEVICE inline void fwht_stage(float* x, std::uint32_t p, std::uint32_t h, std::uint32_t rank,
                                           std::uint32_t ranks) {
  for (std::uint32_t b = rank; b < p / 2u; b += ranks) {
    const std::uint32_t i = butterfly_first(b, h);
    const float a = x[i];
    const float c = x[i + h];
    x[i] = add_rn(a, c);
    x[i + h] = add_rn(a, -c);
  }
}

/// detail::fwht by a group: `sync()` after every stage. O(p log p / ranks) per rank.
template <class Sync>
MICACHE_HOST_DEVICE void group_fwht(float* x, std::uint32_t p, std::uint32_t rank, std::uint32_t ranks, Sync&& sync) {
  for (std::uint32_t h = 1; h < p; h <<= 1) {
    fwht_stage(x, p, h, rank, ranks);
    sync();
  }
}

/// detail::middle_rounds by a group: sync() after each step.
template <class Sync>
MICACHE_HOST_DEVICE void group_middle_rounds(float* y, const std::uint32_t* signs, std::uint32_t p, std::uint32_t rank,
                                             std::uint32_t ranks, Sync&& sync) {
  const float scale = inv_sqrt_power_of_two(p);
  group_fwht(y, p, rank, ranks, sync);
  for (std::uint32_t i = rank; i < p; i += ranks) {
    const float v = mul_rn(y[i], scale);
    y[i] = sign_is_negative(signs, p + i) ? -v : v;
  }
  sync();
  group_fwht(y, p, rank, ranks, sync);
}

/// detail::rotate by a group: y (p floats) = rotate(x). x and y distinct; on
/// return y is complete for every rank (the last step ends with sync()).
template <class Sync>
MICACHE_HOST_DEVICE void group_rotate(const float* x, std::uint32_t dim, float* y, const std::uint32_t* signs,
                                      std::uint32_t p, std::uint32_t rank, std::uint32_t ranks, Sync&& sync) {
  const float scale = inv_sqrt_power_of_two(p);
  for (std::uint32_t i = rank; i < p; i += ranks) {
    y[i] = i < dim ? (sign_is_negative(signs, i) ? -x[i] : x[i]) : 0.0f;
  }
  sync();
  group_middle_rounds(y, signs, p, rank, ranks, sync);
  for (std::uint32_t i = rank; i < p; i += ranks) {
    y[i] = mul_rn(y[i], scale);
  }
  sync();
}

/// detail::unrotate by a group: y (p floats) is overwritten, x_out receives
/// `dim` floats (x_out may not alias y here).
template <class Sync>
MICACHE_HOST_DEVICE void group_unrotate(float* y, float* x_out, const std::uint32_t* signs, std::uint32_t p,
                                        std::uint32_t dim, std::uint32_t rank, std::uint32_t ranks, Sync&& sync) {
  const float scale = inv_sqrt_power_of_two(p);
  group_middle_rounds(y, signs, p, rank, ranks, sync);
  for (std::uint32_t i = rank; i < dim; i += ranks) {
    const float v = mul_rn(y[i], scale);
    x_out[i] = sign_is_negative(signs, i) ? -v : v;
  }
}

/// Elements of v[0..n) (n a power of two) that lane `lane` of 32 sums alone
/// before the lanes combine: the block [lane * E, lane * E + E) with
/// E = n / 32 when n >= 32, else element `lane` alone for lane < n.
/// tree_sum over n elements is then: each lane's tree_sum of its block, and
/// the 32 (or n) lane sums combined pairwise, lanes (2i, 2i+1) first, then
/// (4i, 4i+2), ... (xor shuffles 1, 2, 4, ...): the same tree.
struct LaneBlock {
  std::uint32_t first;
  std::uint32_t count;
};

MICACHE_HOST_DEVICE constexpr LaneBlock lane_block(std::uint32_t n, std::uint32_t lane) {
  if (n >= 32u) return LaneBlock{lane * (n / 32u), n / 32u};
  return LaneBlock{lane, lane < n ? 1u : 0u};
}

/// Word w (0 <= w < layout.code_bytes / 4) of a record's code area, from the
/// codes of coordinates [0, p): the little-endian 32-bit word that pack_code
/// leaves there (bit stream LSB first). Lets each thread write whole words
/// with no read-modify-write. O(32 / bits + 1).
MICACHE_HOST_DEVICE inline std::uint32_t code_word(const std::uint8_t* codes, const RecordLayout& layout,
                                                   std::uint32_t w) {
  const std::uint32_t bits = layout.bits;
  const std::uint32_t low = w * 32u;
  std::uint32_t first = low / bits;
  const std::uint32_t end_bit = low + 32u;
  std::uint32_t word = 0;
  for (std::uint32_t i = first; i < layout.padded_dim && i * bits < end_bit; ++i) {
    const std::uint32_t bit = i * bits;
    const std::uint32_t code = codes[i];
    word |= bit >= low ? code << (bit - low) : code >> (low - bit);
  }
  return word;
}

}  // namespace micache::detail
