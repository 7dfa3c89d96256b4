// One compressed vector ("record") of a TurboQuant-style KV cache: its byte
// layout, the same on every backend, and the packing of its codes.
// C++17: included by .cu files.
#pragma once

#include <cstdint>
#include <cstring>

#include "micache/host_device.hpp"

namespace micache::detail {

/// Byte layout of one record (one key or value vector), the same on every backend.
///
/// A key record is `[codes][f32 norm][f32 residual_norm][sign bits]`, a value
/// record (projections == 0) is `[codes][f32 norm]`:
/// - codes: `padded_dim` codes of `bits` bits, one bit stream, LSB first
///   (coordinate i in bits [i*bits, i*bits + bits)), padded to a multiple of 4 bytes;
/// - norm: ||x||, f32;
/// - residual_norm: ||r||, f32, of the residual in the unit-scale rotated space;
/// - sign bits: bit j (byte j/8, bit j%8) set when <S_j, r> >= 0; ceil(m/8)
///   bytes padded to a multiple of 4.
/// Floats are stored with memcpy in the machine's byte order (little-endian on
/// every supported target), so records are byte arrays, 4-byte aligned, with no
/// alignment requirement beyond that. When projections == 0,
/// `residual_norm_offset == sign_offset == record_bytes` (absent).
/// At dim 128, bits 4, m 32: 64 + 4 + 4 + 4 = 76 bytes (value record: 68).
struct RecordLayout {
  std::uint32_t dim;                   ///< vector length
  std::uint32_t padded_dim;            ///< p: the next power of two >= dim (the rotation's size)
  std::uint32_t bits;                  ///< bits per code, 1..8
  std::uint32_t projections;           ///< m: QJL sign bits; 0 for values
  std::uint32_t code_bytes;            ///< ceil(p * bits / 8) rounded up to a multiple of 4
  std::uint32_t norm_offset;           ///< byte offset of the f32 norm (== code_bytes)
  std::uint32_t residual_norm_offset;  ///< byte offset of the f32 residual norm
  std::uint32_t sign_offset;           ///< byte offset of the sign bits
  std::uint32_t record_bytes;          ///< bytes per record, a multiple of 4
};

/// The smallest power of two >= n (n >= 1).
MICACHE_HOST_DEVICE constexpr std::uint32_t next_power_of_two(std::uint32_t n) {
  std::uint32_t p = 1;
  while (p < n) {
    p <<= 1;
  }
  return p;
}

MICACHE_HOST_DEVICE constexpr std::uint32_t round_up_to_4(std::uint32_t n) { return (n + 3u) & ~3u; }

/// The layout of records of `dim`-vectors with `bits`-bit codes and `projections`
/// sign bits (0 for value records). Preconditions: 1 <= dim <= 2^31, 1 <= bits <= 8.
MICACHE_HOST_DEVICE constexpr RecordLayout make_record_layout(std::uint32_t dim, std::uint32_t bits,
                                                              std::uint32_t projections) {
  RecordLayout layout{};
  layout.dim = dim;
  layout.padded_dim = next_power_of_two(dim);
  layout.bits = bits;
  layout.projections = projections;
  layout.code_bytes = round_up_to_4((layout.padded_dim * bits + 7u) / 8u);
  layout.norm_offset = layout.code_bytes;
  if (projections == 0) {
    layout.record_bytes = layout.norm_offset + 4u;
    layout.residual_norm_offset = layout.record_bytes;
    layout.sign_offset = layout.record_bytes;
  } else {
    layout.residual_norm_offset = layout.norm_offset + 4u;
    layout.sign_offset = layout.residual_norm_offset + 4u;
    layout.record_bytes = layout.sign_offset + round_up_to_4((projections + 7u) / 8u);
  }
  return layout;
}

/// The f32 a record holds at `bytes` (a norm), by memcpy: no alignment needed.
MICACHE_HOST_DEVICE inline float load_f32(const std::uint8_t* bytes) {
  float v;
  std::memcpy(&v, bytes, sizeof v);
  return v;
}

/// Stores `v` at `bytes` the way load_f32 reads it.
MICACHE_HOST_DEVICE inline void store_f32(std::uint8_t* bytes, float v) { std::memcpy(bytes, &v, sizeof v); }

// ---- code packing: one LSB-first bit stream; a code of 1..8 bits spans at most two bytes ----

/// Code of coordinate `i` (bits [i*bits, i*bits + bits) of `codes`). O(1).
MICACHE_HOST_DEVICE inline std::uint32_t unpack_code(const std::uint8_t* codes, std::uint32_t i, std::uint32_t bits) {
  const std::uint32_t bit = i * bits;
  const std::uint32_t byte = bit >> 3;
  const std::uint32_t shift = bit & 7u;
  std::uint32_t window = codes[byte];
  if (shift + bits > 8u) {
    window |= static_cast<std::uint32_t>(codes[byte + 1]) << 8;
  }
  return (window >> shift) & ((1u << bits) - 1u);
}

/// ORs `code` (< 2^bits) into coordinate `i`'s bits; they must be zero beforehand. O(1).
MICACHE_HOST_DEVICE inline void pack_code(std::uint8_t* codes, std::uint32_t i, std::uint32_t bits,
                                          std::uint32_t code) {
  const std::uint32_t bit = i * bits;
  const std::uint32_t byte = bit >> 3;
  const std::uint32_t shift = bit & 7u;
  codes[byte] = static_cast<std::uint8_t>(codes[byte] | ((code << shift) & 0xffu));
  if (shift + bits > 8u) {
    codes[byte + 1] = static_cast<std::uint8_t>(codes[byte + 1] | (code >> (8u - shift)));
  }
}

}  // namespace micache::detail
