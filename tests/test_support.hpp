// Helpers shared by the test files: the devices to run on, seeded data, bit comparisons.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "micache/micache.hpp"

namespace micache::testing {

/// Every device this build and machine can run: the CPU always, CUDA devices when present.
inline std::vector<Device> test_devices() { return available_devices(); }

/// gtest parameter name: "cpu" or "cuda0".
inline std::string device_param_name(const ::testing::TestParamInfo<Device>& info) {
  return info.param.is_cpu() ? "cpu" : "cuda" + std::to_string(info.param.index);
}

/// Skips the running test with a message when no CUDA device can be used.
#define MICACHE_REQUIRE_CUDA()                                                    \
  do {                                                                            \
    if (!::micache::cuda_unavailable_reason().empty()) {                          \
      GTEST_SKIP() << "no CUDA device: " << ::micache::cuda_unavailable_reason(); \
    }                                                                             \
  } while (0)

/// `n` values uniform in [lo, hi) from a fixed seed.
inline std::vector<float> random_values(std::size_t n, std::uint32_t seed, float lo = 0.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

/// N(0,1) floats from std::mt19937 through Box-Muller (std::normal_distribution
/// gives different numbers with different standard libraries).
class Gaussian {
 public:
  explicit Gaussian(std::uint32_t seed) : rng_(seed) {}

  std::vector<float> vector(std::size_t n) {
    std::vector<float> out(n);
    for (std::size_t i = 0; i < n; i += 2) {
      const double radius = std::sqrt(-2.0 * std::log(uniform()));
      const double angle = 6.28318530717958647692 * uniform();
      out[i] = static_cast<float>(radius * std::cos(angle));
      if (i + 1 < n) out[i + 1] = static_cast<float>(radius * std::sin(angle));
    }
    return out;
  }

 private:
  double uniform() { return (static_cast<double>(rng_() >> 8) + 0.5) / 16777216.0; }

  std::mt19937 rng_;
};

/// Random post-softmax-like rows: each row of `cols` positive values summing to ~1.
inline std::vector<float> random_softmax_rows(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  std::vector<float> out = random_values(rows * cols, seed, 0.0f, 4.0f);
  for (std::size_t r = 0; r < rows; ++r) {
    float sum = 0.0f;
    for (std::size_t c = 0; c < cols; ++c) sum += (out[r * cols + c] = std::exp(out[r * cols + c]));
    for (std::size_t c = 0; c < cols; ++c) out[r * cols + c] /= sum;
  }
  return out;
}

/// Values as the tensor stores them: each rounded to `dtype` and back to f32.
inline std::vector<float> rounded_to(const std::vector<float>& values, DType dtype) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    out[i] = dtype == DType::F16    ? f16_to_f32(f32_to_f16(values[i]))
             : dtype == DType::BF16 ? bf16_to_f32(f32_to_bf16(values[i]))
                                    : values[i];
  }
  return out;
}

/// Asserts two float vectors are equal bit for bit (NaN equals NaN whatever its payload).
inline void expect_same_bits(const std::vector<float>& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const bool same = (std::isnan(actual[i]) && std::isnan(expected[i])) ||
                      float_bits(actual[i]) == float_bits(expected[i]);
    if (!same && ++mismatches <= 5) {
      ADD_FAILURE() << "element " << i << ": " << actual[i] << " != " << expected[i];
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

/// Expects `fn()` to throw micache::Error with `code` and exactly `message`.
template <class Fn>
void expect_error(Fn&& fn, ErrorCode code, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected Error(" << to_string(code) << ", \"" << message << "\"), nothing thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_EQ(std::string(e.what()), message);
  }
}

}  // namespace micache::testing
