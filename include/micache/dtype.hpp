// Element types of stored tensors, and exact conversions between them (host and device).
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "micache/host_device.hpp"

namespace micache {

/// Element type of a Tensor.
///
/// F32, F16 (IEEE binary16) and BF16 (bfloat16) are the stored float types;
/// arithmetic is always accumulated in F32. I32 holds indices (top-k results,
/// FlashInfer's page metadata); I64 holds vLLM's slot numbers; U8 holds packed codes.
enum class DType : std::uint8_t { F32, F16, BF16, I32, U8, I64 };

/// Bytes per element.
constexpr std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::U8: return 1;
    case DType::I64: return 8;
  }
  return 0;
}

/// Lower-case name, as safetensors spells it where it has one ("f32", "bf16", ...).
constexpr const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
    case DType::I64: return "i64";
  }
  return "?";
}

/// True for F32, F16 and BF16: the types attention patterns and activations may have.
constexpr bool is_float_dtype(DType dtype) noexcept {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16;
}

MICACHE_HOST_DEVICE inline std::uint32_t float_bits(float value) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

MICACHE_HOST_DEVICE inline float bits_float(std::uint32_t bits) noexcept {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

/// bfloat16 bits to float: exact (bf16 is the top half of an f32).
MICACHE_HOST_DEVICE inline float bf16_to_f32(std::uint16_t bits) noexcept {
  return bits_float(static_cast<std::uint32_t>(bits) << 16);
}

/// float to bfloat16 bits, round to nearest even; NaN stays NaN (quiet), infinities stay.
MICACHE_HOST_DEVICE inline std::uint16_t f32_to_bf16(float value) noexcept {
  const std::uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

/// IEEE binary16 bits to float: exact, subnormals included.
MICACHE_HOST_DEVICE inline float f16_to_f32(std::uint16_t half) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1fu;
  std::uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1f) {
    return bits_float(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    if (mantissa == 0) {
      return bits_float(sign);
    }
    // Subnormal: normalise the mantissa.
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    const std::uint32_t exp32 = static_cast<std::uint32_t>(127 - 15 + 1 - shift);
    return bits_float(sign | (exp32 << 23) | (mantissa << 13));
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/// float to IEEE binary16 bits, round to nearest even; overflow gives infinity,
/// NaN stays NaN (quiet), tiny values become subnormals or signed zero.
MICACHE_HOST_DEVICE inline std::uint16_t f32_to_f16(float value) noexcept {
  const std::uint32_t bits = float_bits(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) {
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: infinity
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) {  // below half the smallest subnormal (2^-25): zero
      return sign;
    }
    const std::uint32_t exponent = abs >> 23;
    const std::uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24
    const std::uint32_t half_mantissa = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    std::uint32_t result = half_mantissa;
    if (remainder > halfway || (remainder == halfway && (half_mantissa & 1u))) {
      ++result;
    }
    return static_cast<std::uint16_t>(sign | result);
  }
  const std::uint32_t rebiased = abs - (112u << 23);
  const std::uint32_t rounding = 0xfffu + ((rebiased >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | ((rebiased + rounding) >> 13));
}

/// Reads element `index` of a float-typed buffer as f32 (exact for every float dtype).
MICACHE_HOST_DEVICE inline float load_as_f32(const void* data, DType dtype, std::size_t index) noexcept {
  switch (dtype) {
    case DType::F16: return f16_to_f32(static_cast<const std::uint16_t*>(data)[index]);
    case DType::BF16: return bf16_to_f32(static_cast<const std::uint16_t*>(data)[index]);
    case DType::I32: return static_cast<float>(static_cast<const std::int32_t*>(data)[index]);
    case DType::U8: return static_cast<float>(static_cast<const std::uint8_t*>(data)[index]);
    case DType::I64: return static_cast<float>(static_cast<const std::int64_t*>(data)[index]);
    case DType::F32: break;
  }
  return static_cast<const float*>(data)[index];
}

}  // namespace micache
