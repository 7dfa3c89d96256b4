// One compressed vector ("record") of a TurboQuant-style KV cache, and the
// per-vector math that the CPU backend and the CUDA kernels share: randomised
// Hadamard rotation, scalar codes, norms, QJL residual signs, score estimates.
// C++17: included by .cu files.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "micache/host_device.hpp"

namespace micache::detail {

// ---------------------------------------------------------------------------
// Rounding. Every product and sum whose bits end up in a record (norms,
// rotation, codes, residual, sign bits) goes through these helpers. nvcc
// contracts `a * b + c` into one FMA by default (one rounding instead of two)
// and --use_fast_math approximates division and square roots; the intrinsics
// below forbid both, so CPU and CUDA records are identical bit for bit.
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

/// sqrt(a), IEEE square root even under --use_fast_math.
MICACHE_HOST_DEVICE inline float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// ---------------------------------------------------------------------------
// Record layout.
// ---------------------------------------------------------------------------

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

MICACHE_HOST_DEVICE inline float load_f32(const std::uint8_t* bytes) {
  float v;
  std::memcpy(&v, bytes, sizeof v);
  return v;
}

MICACHE_HOST_DEVICE inline void store_f32(std::uint8_t* bytes, float v) { std::memcpy(bytes, &v, sizeof v); }

// ---------------------------------------------------------------------------
// Code packing: one LSB-first bit stream; a code of 1..8 bits spans at most two bytes.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Rotation: a randomised Hadamard transform applied twice,
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
// ---------------------------------------------------------------------------

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

/// y = H D2 H D1 x / p: x has `dim` floats, y receives `p` floats (x zero-padded).
/// Per round: flip signs, fwht, multiply by 1/sqrt(p). O(p log p).
MICACHE_HOST_DEVICE inline void rotate(const float* x, std::uint32_t dim, float* y, const std::uint32_t* signs,
                                       std::uint32_t p) {
  const float scale = inv_sqrt_power_of_two(p);
  for (std::uint32_t i = 0; i < p; ++i) {
    y[i] = i < dim ? (sign_is_negative(signs, i) ? -x[i] : x[i]) : 0.0f;
  }
  fwht(y, p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const float v = mul_rn(y[i], scale);
    y[i] = sign_is_negative(signs, p + i) ? -v : v;
  }
  fwht(y, p);
  for (std::uint32_t i = 0; i < p; ++i) {
    y[i] = mul_rn(y[i], scale);
  }
}

/// The inverse rotation x = D1 H D2 H y / p, truncated to `dim` floats.
/// `y` (p floats) is the work space and is overwritten; `x_out` may equal `y`.
/// Per round: fwht, multiply by 1/sqrt(p), flip signs. O(p log p).
MICACHE_HOST_DEVICE inline void unrotate(float* y, float* x_out, const std::uint32_t* signs, std::uint32_t p,
                                         std::uint32_t dim) {
  const float scale = inv_sqrt_power_of_two(p);
  fwht(y, p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const float v = mul_rn(y[i], scale);
    y[i] = sign_is_negative(signs, p + i) ? -v : v;
  }
  fwht(y, p);
  for (std::uint32_t i = 0; i < dim; ++i) {
    const float v = mul_rn(y[i], scale);
    x_out[i] = sign_is_negative(signs, i) ? -v : v;
  }
}

// ---------------------------------------------------------------------------
// Encoding and decoding.
// ---------------------------------------------------------------------------

/// Sum of v[0..n), n a power of two, as a balanced tree: first v[2i] + v[2i+1]
/// for every i, then the same on the n/2 partial sums, and so on (a warp does
/// the same with xor-shuffles 1, 2, 4, ... over consecutive elements).
/// Overwrites v. O(n).
MICACHE_HOST_DEVICE inline float tree_sum(float* v, std::uint32_t n) {
  for (std::uint32_t width = n; width > 1u; width >>= 1) {
    for (std::uint32_t i = 0; i < width / 2u; ++i) {
      v[i] = add_rn(v[2u * i], v[2u * i + 1u]);
    }
  }
  return v[0];
}

/// Code of the unit-scale coordinate t: the number of `boundaries` <= t
/// (`levels - 1` ascending boundaries, levels a power of two), by binary
/// lifting: log2(levels) steps with no data-dependent branch. NaN gets code 0.
MICACHE_HOST_DEVICE inline std::uint32_t bucket(float t, const float* boundaries, std::uint32_t levels) {
  std::uint32_t code = 0;
  for (std::uint32_t step = levels >> 1; step > 0u; step >>= 1) {
    code += boundaries[code + step - 1u] <= t ? step : 0u;
  }
  return code;
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

/// Encodes x (`layout.dim` floats) into `record` (`layout.record_bytes` bytes,
/// fully written).
///
/// - norm = sqrt(tree_sum(x_i^2)) over the p zero-padded values (summed on x * 2^shift, then scaled back);
/// - y = rotate(x); t_i = y_i * (sqrt(p) / norm) (about N(0,1)); code_i = bucket(t_i);
/// - residual r_i = y_i * (1 / norm) - centroids[code_i] * (1 / sqrt(p)) (unit-scale
///   rotated space), residual_norm = sqrt(tree_sum(r_i^2));
/// - sign bit j = tree_sum(S_ji * r_i) >= 0, S_j row j of `projection_matrix`
///   (m x p, row-major; may be null when m == 0).
/// A zero vector gets every code equal to bucket(0), norm 0, residual norm 0 and
/// no sign bits. Any finite x encodes: the sums run on x scaled by a power of two
/// (see below); only the stored norm saturates to infinity when ||x|| exceeds
/// FLT_MAX. Preconditions: x finite; `centroids` has 2^bits entries and `boundaries`
/// 2^bits - 1; `signs` 2p bits; `scratch` 2p floats. O(p log p + m p).
MICACHE_HOST_DEVICE inline void encode_record(const float* x, const RecordLayout& layout, const std::uint32_t* signs,
                                              const float* centroids, const float* boundaries,
                                              const float* projection_matrix, float* scratch, std::uint8_t* record) {
  const std::uint32_t p = layout.padded_dim;
  const std::uint32_t levels = 1u << layout.bits;
  float* y = scratch;
  float* work = scratch + p;
  for (std::uint32_t b = 0; b < layout.record_bytes; ++b) {
    record[b] = 0;
  }
  // Work on x * 2^shift, max |x_i| scaled into [1, 2): the scaling is exact
  // and every step below is scale-equivariant, so codes, residuals and sign
  // bits are those of x itself, while ||x||^2 and the rotation's sums can
  // neither overflow (|x_i| near FLT_MAX) nor underflow (subnormal x).
  float largest = 0.0f;
  for (std::uint32_t i = 0; i < layout.dim; ++i) {
    const float magnitude = x[i] < 0.0f ? -x[i] : x[i];
    largest = magnitude > largest ? magnitude : largest;
  }
  if (largest == 0.0f) {
    const std::uint32_t zero_code = bucket(0.0f, boundaries, levels);
    for (std::uint32_t i = 0; i < p; ++i) {
      pack_code(record, i, layout.bits, zero_code);
    }
    return;
  }
  const int shift = 1 - binary_exponent(largest);
  const PowerOfTwoScale scale(shift);
  for (std::uint32_t i = 0; i < p; ++i) {
    work[i] = i < layout.dim ? scale(x[i]) : 0.0f;
  }
  rotate(work, layout.dim, y, signs, p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const float scaled = i < layout.dim ? scale(x[i]) : 0.0f;
    work[i] = mul_rn(scaled, scaled);
  }
  const float norm = sqrt_rn(tree_sum(work, p));  // of x * 2^shift
  store_f32(record + layout.norm_offset, PowerOfTwoScale(-shift)(norm));
  const float t_scale = div_rn(sqrt_power_of_two(p), norm);
  const float inv_norm = div_rn(1.0f, norm);
  const float inv_sqrt_p = inv_sqrt_power_of_two(p);
  for (std::uint32_t i = 0; i < p; ++i) {
    const std::uint32_t code = bucket(mul_rn(y[i], t_scale), boundaries, levels);
    pack_code(record, i, layout.bits, code);
    y[i] = add_rn(mul_rn(y[i], inv_norm), -mul_rn(centroids[code], inv_sqrt_p));
  }
  if (layout.projections == 0) {
    return;
  }
  for (std::uint32_t i = 0; i < p; ++i) {
    work[i] = mul_rn(y[i], y[i]);
  }
  store_f32(record + layout.residual_norm_offset, sqrt_rn(tree_sum(work, p)));
  for (std::uint32_t j = 0; j < layout.projections; ++j) {
    const float* row = projection_matrix + static_cast<std::size_t>(j) * p;
    for (std::uint32_t i = 0; i < p; ++i) {
      work[i] = mul_rn(row[i], y[i]);
    }
    if (tree_sum(work, p) >= 0.0f) {
      std::uint8_t& byte = record[layout.sign_offset + j / 8u];
      byte = static_cast<std::uint8_t>(byte | (1u << (j % 8u)));
    }
  }
}

/// Decodes a record into `out` (`layout.dim` floats), the MSE-optimal
/// reconstruction (the QJL part plays no role):
/// out = unrotate(centroids[code_i] * (norm * (1 / sqrt(p)))). `scratch` holds p floats.
/// O(p log p).
MICACHE_HOST_DEVICE inline void decode_record(const std::uint8_t* record, const RecordLayout& layout,
                                              const std::uint32_t* signs, const float* centroids, float* scratch,
                                              float* out) {
  const std::uint32_t p = layout.padded_dim;
  const float scale = mul_rn(load_f32(record + layout.norm_offset), inv_sqrt_power_of_two(p));
  for (std::uint32_t i = 0; i < p; ++i) {
    scratch[i] = mul_rn(centroids[unpack_code(record, i, layout.bits)], scale);
  }
  unrotate(scratch, out, signs, p, layout.dim);
}

// ---------------------------------------------------------------------------
// Scores. The query is prepared once: qr = rotate(q) (p floats) and, for QJL,
// qs_j = <S_j, qr> (m floats). Then every key costs O(p) (plus O(m) for QJL)
// instead of a rotation. nvcc may fuse the multiply-adds into FMAs: scores agree
// across backends to a tolerance, not bit for bit.
// ---------------------------------------------------------------------------

/// Sum over i of qr_i * centroids[code_i] as four partial sums s_k over
/// i = k mod 4 (each in ascending i), combined as (s0 + s1) + (s2 + s3); for
/// p < 4, s0 takes every term. Four independent chains let a CPU pipeline the
/// adds and a GPU thread overlap its loads; 4-bit codes are read a byte (two
/// codes) at a time. Every backend calls this function. O(p).
MICACHE_HOST_DEVICE inline float centroid_dot(const std::uint8_t* record, const RecordLayout& layout,
                                              const float* centroids, const float* rotated_query) {
  const std::uint32_t p = layout.padded_dim;
  const float* q = rotated_query;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  std::uint32_t i = 0;
  if (layout.bits == 4u) {
    for (; i + 4u <= p; i += 4u) {
      const std::uint32_t low = record[i >> 1];
      const std::uint32_t high = record[(i >> 1) + 1u];
      s0 += q[i] * centroids[low & 15u];
      s1 += q[i + 1u] * centroids[low >> 4];
      s2 += q[i + 2u] * centroids[high & 15u];
      s3 += q[i + 3u] * centroids[high >> 4];
    }
  } else {
    for (; i + 4u <= p; i += 4u) {
      s0 += q[i] * centroids[unpack_code(record, i, layout.bits)];
      s1 += q[i + 1u] * centroids[unpack_code(record, i + 1u, layout.bits)];
      s2 += q[i + 2u] * centroids[unpack_code(record, i + 2u, layout.bits)];
      s3 += q[i + 3u] * centroids[unpack_code(record, i + 3u, layout.bits)];
    }
  }
  for (; i < p; ++i) {
    s0 += q[i] * centroids[unpack_code(record, i, layout.bits)];
  }
  return (s0 + s1) + (s2 + s3);
}

/// estimate_mse from its parts: the record's norm and the sum over i of
/// qr_i * centroids[code_i] (centroid_dot, or any order of it). O(1).
MICACHE_HOST_DEVICE inline float mse_from_dot(float norm, float dot, const RecordLayout& layout, float inv_alpha) {
  return norm * (inv_alpha * inv_sqrt_power_of_two(layout.padded_dim)) * dot;
}

/// s_j of estimate_qjl: true (+1) when sign bit j of `record` is set. O(1).
MICACHE_HOST_DEVICE inline bool qjl_sign_positive(const std::uint8_t* record, const RecordLayout& layout,
                                                  std::uint32_t j) {
  return ((record[layout.sign_offset + j / 8u] >> (j % 8u)) & 1u) != 0u;
}

/// estimate_qjl from its parts: the record's norm and residual norm, the
/// centroid dot product and the sketch sum_j s_j qs_j. O(1).
MICACHE_HOST_DEVICE inline float qjl_from_parts(float norm, float dot, float residual_norm, float sketch,
                                                const RecordLayout& layout) {
  const float sqrt_half_pi = 1.25331413731550025f;
  const float correction = residual_norm * (sqrt_half_pi / static_cast<float>(layout.projections)) * sketch;
  return norm * (inv_sqrt_power_of_two(layout.padded_dim) * dot + correction);
}

/// Estimate of <q, x> from x's record: norm * inv_alpha * sum_i qr_i * centroids[code_i] / sqrt(p),
/// with inv_alpha = 1 / (1 - D), D the codebook's distortion. O(p).
///
/// Why 1 / (1 - D): write t for a scaled rotated coordinate and Q(t) for its
/// centroid. Lloyd-Max centroids are conditional means, Q(t) = E[t | code], so
/// E[Q(t) t] = E[Q(t)^2] = E[t^2] - D = 1 - D. Split qr = a y + w with w
/// orthogonal to y; over a uniformly random rotation E[w | y] = 0, hence
/// E[<qr, y_hat>] = a E[<y, y_hat>] = a ||x||^2 (1 - D) = (1 - D) <q, x>: the plain
/// reconstruction's inner product is shrunk by 1 - D (2/pi at 1 bit, 0.99 at 4).
/// Dividing by it makes the estimate unbiased at zero cost (the caller folds it
/// into the query scale), at the price of a variance larger by 1/(1 - D)^2.
MICACHE_HOST_DEVICE inline float estimate_mse(const std::uint8_t* record, const RecordLayout& layout,
                                              const float* centroids, const float* rotated_query, float inv_alpha) {
  return mse_from_dot(load_f32(record + layout.norm_offset), centroid_dot(record, layout, centroids, rotated_query),
                      layout, inv_alpha);
}

/// bitpolar's QJL-corrected estimate of <q, x> from a key record (m > 0):
/// norm * (sum_i qr_i * centroids[code_i] / sqrt(p) + residual_norm * sqrt(pi/2) / m * sum_j s_j qs_j),
/// s_j = +1 when sign bit j is set (<S_j, r> >= 0), else -1. O(p + m).
///
/// For S_j ~ N(0, I), E[sign(<S_j, r>) <S_j, v>] = sqrt(2/pi) <r, v> / ||r||, so
/// the second term is an unbiased estimate of <qr, r>, the part of <qr, y/||x||>
/// the codes miss. Its variance, about (pi/2) ||r||^2 ||q||^2 / m, exceeds that of
/// the error it corrects (about ||r||^2 ||q||^2 / p) whenever m < (pi/2) p.
MICACHE_HOST_DEVICE inline float estimate_qjl(const std::uint8_t* record, const RecordLayout& layout,
                                              const float* centroids, const float* rotated_query,
                                              const float* projected_query) {
  float sketch = 0.0f;
  for (std::uint32_t j = 0; j < layout.projections; ++j) {
    sketch += qjl_sign_positive(record, layout, j) ? projected_query[j] : -projected_query[j];
  }
  return qjl_from_parts(load_f32(record + layout.norm_offset), centroid_dot(record, layout, centroids, rotated_query),
                        load_f32(record + layout.residual_norm_offset), sketch, layout);
}

}  // namespace micache::detail
