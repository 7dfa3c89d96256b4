// The total order every top-k in micache follows, as one 64-bit key per element.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/dtype.hpp"
#include "micache/host_device.hpp"

namespace micache::detail {

/// Orders top-k candidates: weight descending, equal weights by lower index
/// first, NaN after every number (NaNs by lower index among themselves),
/// -0.0 equal to +0.0.
///
/// The key of `(weight, index)` is `(ordered(weight) << 32) | ~index`, so a
/// larger key ranks first and no two indices of a row share a key: sorting
/// keys descending gives a unique, backend-independent answer. Key 0 never
/// belongs to an element (it needs index 0xffffffff) and serves as "empty".
/// Weights come back from a key exactly, except NaN payloads (canonical NaN)
/// and -0.0 (returned as +0.0).
MICACHE_HOST_DEVICE inline std::uint32_t ordered_weight_bits(std::uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return 0u;  // NaN: below -inf
  }
  if (bits == 0x80000000u) {
    bits = 0u;  // -0.0 ranks as +0.0
  }
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

MICACHE_HOST_DEVICE inline std::uint64_t top_k_key(std::uint32_t weight_bits, std::uint32_t index) {
  return (static_cast<std::uint64_t>(ordered_weight_bits(weight_bits)) << 32) | static_cast<std::uint32_t>(~index);
}

MICACHE_HOST_DEVICE inline std::uint32_t top_k_key_index(std::uint64_t key) { return ~static_cast<std::uint32_t>(key); }

/// The f32 bits of a key's weight (canonical quiet NaN for NaN).
MICACHE_HOST_DEVICE inline std::uint32_t top_k_key_weight_bits(std::uint64_t key) {
  const auto ordered = static_cast<std::uint32_t>(key >> 32);
  if (ordered == 0u) {
    return 0x7fc00000u;
  }
  return (ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered;
}

/// Stores `key`'s column at `indices[at]` and its weight at `weights[at]`:
/// how every top-k writes a result.
MICACHE_HOST_DEVICE inline void store_top_k(std::uint64_t key, std::size_t at, std::int32_t* indices, float* weights) {
  indices[at] = static_cast<std::int32_t>(top_k_key_index(key));
  weights[at] = bits_float(top_k_key_weight_bits(key));
}

}  // namespace micache::detail
