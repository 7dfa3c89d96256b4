// Private, host-safe (g++ and nvcc, C++17): division by a run-time invariant
// as one multiply-high, an add and a shift, for index arithmetic in kernels.
#pragma once

#include <cstdint>

#include "micache/host_device.hpp"

namespace micache::cuda {

/// Quotient and remainder of any 32-bit n by a divisor fixed at launch
/// (Granlund and Montgomery, "Division by invariant integers using
/// multiplication", 1994): with s = ceil(log2 d) and
/// m = floor(2^32 (2^s - d) / d) + 1, n / d = (mulhi(n, m) + n) >> s, the sum
/// taken in 64 bits. Exact for every n < 2^32 and 1 <= d < 2^32.
struct FastDivmod {
  std::uint32_t divisor = 1;
  std::uint32_t multiplier = 1;
  std::uint32_t shift = 0;

  FastDivmod() = default;
  explicit FastDivmod(std::uint32_t d) : divisor(d) {
    while ((std::uint64_t{1} << shift) < d) ++shift;
    multiplier = static_cast<std::uint32_t>(((std::uint64_t{1} << 32) * ((std::uint64_t{1} << shift) - d)) / d + 1);
  }

  MICACHE_HOST_DEVICE std::uint32_t div(std::uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const std::uint64_t high = __umulhi(n, multiplier);
#else
    const std::uint64_t high = (static_cast<std::uint64_t>(n) * multiplier) >> 32;
#endif
    return static_cast<std::uint32_t>((high + n) >> shift);
  }

  MICACHE_HOST_DEVICE void divmod(std::uint32_t n, std::uint32_t& quotient, std::uint32_t& remainder) const {
    quotient = div(n);
    remainder = n - quotient * divisor;
  }
};

}  // namespace micache::cuda
