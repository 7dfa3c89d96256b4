// Host dtype conversions: exact widening, round-to-nearest-even narrowing, NaN kept.
#include <cmath>
#include <limits>

#include "test_support.hpp"

namespace micache::testing {
namespace {

bool is_nan16(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_STREQ(dtype_name(DType::BF16), "bf16");
  EXPECT_TRUE(is_float_dtype(DType::F16));
  EXPECT_FALSE(is_float_dtype(DType::I32));
}

TEST(DType, EveryHalfRoundTripsThroughFloat) {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto half = static_cast<std::uint16_t>(h);
    const float wide = f16_to_f32(half);
    if (is_nan16(half)) {
      ASSERT_TRUE(std::isnan(wide)) << h;
      ASSERT_TRUE(is_nan16(f32_to_f16(wide))) << h;
    } else {
      ASSERT_EQ(f32_to_f16(wide), half) << std::hex << h;
    }
  }
}

TEST(DType, HalfWideningIsExactForKnownValues) {
  EXPECT_EQ(f16_to_f32(0x3c00u), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000u), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7bffu), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001u), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ffu), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x7c00u), std::numeric_limits<float>::infinity());
}

// Between every two adjacent finite halves a < b (including subnormals), the
// midpoint rounds to the one with an even mantissa and its neighbours to the nearer.
TEST(DType, HalfNarrowingRoundsToNearestEven) {
  for (std::uint16_t a = 0; a < 0x7bffu; ++a) {
    const auto b = static_cast<std::uint16_t>(a + 1);
    const float mid = static_cast<float>((static_cast<double>(f16_to_f32(a)) + f16_to_f32(b)) / 2.0);
    ASSERT_EQ(f32_to_f16(mid), (a & 1u) ? b : a) << std::hex << a;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, 0.0f)), a) << std::hex << a;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, std::numeric_limits<float>::infinity())), b) << std::hex << a;
    ASSERT_EQ(f32_to_f16(-mid), static_cast<std::uint16_t>(0x8000u | ((a & 1u) ? b : a)));
  }
}

TEST(DType, HalfNarrowingOverflowsAndUnderflowsAsIeee) {
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bffu);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00u);
  EXPECT_EQ(f32_to_f16(1e30f), 0x7c00u);
  EXPECT_EQ(f32_to_f16(-1e30f), 0xfc00u);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000u);
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001u);
  EXPECT_EQ(f32_to_f16(-1e-30f), 0x8000u);
  EXPECT_TRUE(is_nan16(f32_to_f16(std::numeric_limits<float>::quiet_NaN())));
}

TEST(DType, EveryBfloat16RoundTripsThroughFloat) {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float wide = bf16_to_f32(bits);
    if (std::isnan(wide)) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(wide)))) << b;
    } else {
      ASSERT_EQ(f32_to_bf16(wide), bits) << std::hex << b;
    }
  }
}

TEST(DType, Bfloat16NarrowingRoundsToNearestEven) {
  for (std::uint16_t a = 0; a < 0x7f7fu; ++a) {
    const auto b = static_cast<std::uint16_t>(a + 1);
    const float mid = static_cast<float>((static_cast<double>(bf16_to_f32(a)) + bf16_to_f32(b)) / 2.0);
    ASSERT_EQ(f32_to_bf16(mid), (a & 1u) ? b : a) << std::hex << a;
    ASSERT_EQ(f32_to_bf16(std::nextafter(mid, 0.0f)), a) << std::hex << a;
    ASSERT_EQ(f32_to_bf16(std::nextafter(mid, std::numeric_limits<float>::infinity())), b) << std::hex << a;
  }
}

TEST(DType, Bfloat16KeepsNaNAndInfinity) {
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // A signalling NaN whose payload lives only in the low bits must not become infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_float(0x7f800001u)))));
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80u);
  EXPECT_EQ(f32_to_bf16(3.4e38f), 0x7f80u);  // rounds past the largest bf16
}

}  // namespace
}  // namespace micache::testing
