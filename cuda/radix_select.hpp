// Private, host-safe (g++ and nvcc, C++17): the radix select behind top-k for
// kWarpTopKMax < k <= kSelectMaxK. One block per row finds the k-th largest
// top_k_key by eight passes of 8-bit digits, most significant first, keeps
// the k keys at or above it (keys are unique, so exactly k) and sorts them.
// The pass arithmetic lives here so that the host tests run the same steps.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/host_device.hpp"

namespace micache::cuda {

/// Largest k the radix select handles; larger k sort each row.
inline constexpr std::size_t kSelectMaxK = 1024;
/// Threads of a radix-select block.
inline constexpr unsigned kSelectThreads = 256;
/// Digits per pass (8 bits) and passes over a 64-bit key.
inline constexpr unsigned kSelectBuckets = 256;
inline constexpr unsigned kSelectPasses = 8;
/// Rows of at most this many columns keep their keys in shared memory
/// (32 KiB); longer rows keep them in a global slice per block.
inline constexpr std::size_t kSelectSharedKeys = 4096;
/// Most blocks a radix select keeping keys in global memory runs at once (its scratch is blocks * n_cols keys).
inline constexpr std::size_t kSelectGlobalBlocks = 1024;

/// The digit of `key` that pass `pass` (0 = most significant) counts.
MICACHE_HOST_DEVICE constexpr std::uint32_t select_digit(std::uint64_t key, unsigned pass) {
  return static_cast<std::uint32_t>(key >> (56u - 8u * pass)) & 0xffu;
}

/// True when `key` agrees with `prefix` on the digits of passes before `pass`.
MICACHE_HOST_DEVICE constexpr bool matches_prefix(std::uint64_t key, std::uint64_t prefix, unsigned pass) {
  return pass == 0 || (key >> (64u - 8u * pass)) == (prefix >> (64u - 8u * pass));
}

/// One pass's decision: the bucket of a histogram of `kSelectBuckets` counts
/// (digit d's count at `histogram[d]`) holding the k-th largest key (k >= 1,
/// counted from the top among the matching keys), and how many of the keys
/// in that bucket still rank above the k-th (the k for the next pass).
struct SelectStep {
  std::uint32_t digit;
  std::size_t k;
};

MICACHE_HOST_DEVICE inline SelectStep select_bucket(const std::uint32_t* histogram, std::size_t k) {
  std::size_t above = 0;
  for (std::uint32_t d = kSelectBuckets; d-- > 0;) {
    if (above + histogram[d] >= k) return SelectStep{d, k - above};
    above += histogram[d];
  }
  return SelectStep{0, k - above};
}

/// `prefix` with pass `pass`'s digit set to `digit`.
MICACHE_HOST_DEVICE constexpr std::uint64_t with_digit(std::uint64_t prefix, unsigned pass, std::uint32_t digit) {
  return prefix | (static_cast<std::uint64_t>(digit) << (56u - 8u * pass));
}

/// Smallest power of two >= k (k <= kSelectMaxK): the bitonic sort's width.
MICACHE_HOST_DEVICE constexpr std::uint32_t select_sort_width(std::size_t k) {
  std::uint32_t width = 1;
  while (width < k) width <<= 1;
  return width;
}

}  // namespace micache::cuda
