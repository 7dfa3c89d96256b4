// Float arithmetic that rounds the same on every backend: the operations the
// record math (record_codec.hpp, rotation.hpp) and the QJL projection build
// on, and exact powers of two.
// C++17: included by .cu files.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "micache/host_device.hpp"

namespace micache::detail {

// ---------------------------------------------------------------------------
// Every product and sum whose bits end up in a record (norms, rotation, codes,
// residual, sign bits) or in a QJL projection goes through these helpers.
// nvcc contracts `a * b + c` into one FMA by default (one rounding instead of
// two) and --use_fast_math approximates division and square roots; the
// intrinsics below forbid both, so CPU and CUDA results are identical bit for
// bit.
//
// On the host the helpers are plain operations, which the compiler may still
// fuse on a target with FMA (x86-64 with -mfma, -march=x86-64-v3 or native;
// every aarch64 host). g++ does so by default in C++, in ISO and GNU dialects
// alike (-ffp-contract=fast; only ISO C implies off): g++ 12 at -O2 -mfma
// -std=c++20 turns add_rn(mul_rn(a, b), c) into one vfmadd, even across
// statements. clang's default (-ffp-contract=on) fuses within one expression.
// micache therefore compiles every translation unit with -ffp-contract=off
// (CMakeLists.txt), and so must any other code that calls these functions on
// the host and expects the records micache writes; -ffast-math breaks them
// too. The `fma` build (scripts/test.sh fma) checks the golden hashes.
// ---------------------------------------------------------------------------

/// a * b, rounded once, never fused into an FMA.
MICACHE_HOST_DEVICE inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/// a + b, rounded once, never fused into an FMA.
MICACHE_HOST_DEVICE inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

/// a / b, IEEE division even under --use_fast_math.
MICACHE_HOST_DEVICE inline float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

/// e^x in f32: the device's expf, the host's std::exp. Not correctly rounded,
/// so the two may differ by an ulp; attention outputs, its only user, are
/// compared across backends within derived bounds.
MICACHE_HOST_DEVICE inline float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}

/// sqrt(a), IEEE square root even under --use_fast_math.
MICACHE_HOST_DEVICE inline float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

/// sqrt(p) for a power of two p, correctly rounded (no library call: the same bits everywhere).
MICACHE_HOST_DEVICE constexpr float sqrt_power_of_two(std::uint32_t p) {
  float r = 1.0f;
  for (; p >= 4u; p >>= 2) {
    r *= 2.0f;
  }
  return p == 2u ? r * 1.41421356237309505f : r;
}

/// 1/sqrt(p) for a power of two p, correctly rounded.
MICACHE_HOST_DEVICE constexpr float inv_sqrt_power_of_two(std::uint32_t p) {
  float r = 1.0f;
  for (; p >= 4u; p >>= 2) {
    r *= 0.5f;
  }
  return p == 2u ? r * 0.707106781186547524f : r;
}

/// e such that |v| = m * 2^e with m in [0.5, 1), for finite nonzero v.
MICACHE_HOST_DEVICE inline int binary_exponent(float v) {
  int exponent = 0;
#if defined(__CUDA_ARCH__)
  frexpf(v, &exponent);
#else
  std::frexp(v, &exponent);
#endif
  return exponent;
}

/// Multiplication by 2^shift for |shift| <= 250 as two factors, each a normal
/// float built from its bits (no libm call), so that no factor leaves the
/// float range; exact whenever the result is a normal float. Built once per
/// vector, applied to each element.
struct PowerOfTwoScale {
  float first;
  float second;

  MICACHE_HOST_DEVICE explicit PowerOfTwoScale(int shift)
      : first(power_of_two(shift / 2)), second(power_of_two(shift - shift / 2)) {}

  MICACHE_HOST_DEVICE float operator()(float v) const { return mul_rn(mul_rn(v, first), second); }

  /// 2^k for -126 <= k <= 127.
  MICACHE_HOST_DEVICE static float power_of_two(int k) {
    const std::uint32_t bits = static_cast<std::uint32_t>(127 + k) << 23;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
};

}  // namespace micache::detail
