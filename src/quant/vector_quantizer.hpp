// Private: one TurboQuant-style quantiser (rotation, codebook, QJL matrix) and its host-side operations.
#pragma once

#include <cstdint>
#include <vector>

#include "micache/backend/detail/record_layout.hpp"
#include "src/quant/codebook.hpp"

namespace micache::detail {

/// One quantiser: a rotation, a codebook, and (keys only) a QJL matrix. Immutable after construction.
///
/// Records follow `micache/backend/detail/record_layout.hpp`; every operation here is the
/// reference the CUDA kernels reproduce (encode, decode and the query's
/// projection bit for bit, scores to a tolerance). Copying shares the memoised codebook.
///
/// Randomness is counter-based, so it is the same on every platform and needs
/// no generator state: draw (seed, stream, purpose, index) is splitmix64's
/// finaliser applied four times, nested, `mix(mix(mix(mix(seed) ^ stream) ^ purpose) ^ index)`.
/// The finaliser is a bijection of 64-bit words, so two draws that differ in any
/// field coincide only by a 64-bit collision: different streams, and the rotation
/// and the QJL matrix of one stream (purposes 1 and 2), are independent (bitpolar
/// reuses head h+1's rotation stream as head h's QJL matrix). Rotation sign word w
/// is the top 32 bits of draw w. A uniform is the top 24 bits of a draw, plus 1/2,
/// over 2^24 (in (0, 1)); Gaussians come in Box-Muller pairs: entries 2k and 2k+1 of the
/// projection matrix are r cos(2 pi u2), r sin(2 pi u2) with r = sqrt(-2 ln u1),
/// u1 from draw 2k and u2 from draw 2k+1, in double rounded to f32 (libm differences
/// in the last bit of a double change an f32 with probability about 2^-29).
class VectorQuantizer {
 public:
  /// A quantiser of `dim`-vectors (dim >= 1) with `bits`-bit codes (1..8) and
  /// `projections` QJL sign bits (0 for values). `stream` separates independent
  /// quantisers that share a seed: the cache passes stream = 2*head + (0 for
  /// keys, 1 for values). Preconditions as KvCacheConfig::validate checks them.
  /// O(m p) plus, on the first use of (p, bits) in the process, the codebook design.
  VectorQuantizer(std::uint32_t dim, std::uint32_t bits, std::uint32_t projections, std::uint64_t seed,
                  std::uint64_t stream);

  const RecordLayout& layout() const noexcept { return layout_; }
  const Codebook& codebook() const noexcept { return *codebook_; }
  /// D1 and D2 of the rotation, 2p bits packed in ceil(2p / 32) words (unused high bits zero).
  const std::vector<std::uint32_t>& rotation_signs() const noexcept { return rotation_signs_; }
  /// S, m x p row-major, N(0,1) entries; empty when m == 0.
  const std::vector<float>& projection_matrix() const noexcept { return projection_matrix_; }
  /// 1 / (1 - D), D the codebook's distortion: the factor that makes estimate_mse unbiased.
  float inv_alpha() const noexcept { return inv_alpha_; }

  /// Writes the record of x (`dim` floats) to `record` (`layout().record_bytes` bytes). O(p log p + m p).
  void encode(const float* x, std::uint8_t* record) const;
  /// Writes the reconstruction of `record` to `out` (`dim` floats). O(p log p).
  void decode(const std::uint8_t* record, float* out) const;

  /// A query rotated once (p floats) and projected once (m floats), for scoring many records.
  struct PreparedQuery {
    std::vector<float> rotated;
    std::vector<float> projected;
  };
  /// Prepares `query` (`dim` floats): rotate, then detail::project_query. O(p log p + m p).
  PreparedQuery prepare(const float* query) const;
  /// Unbiased estimate of <query, x> from x's record (see detail::estimate_mse). O(p).
  float estimate_mse(const PreparedQuery& query, const std::uint8_t* record) const;
  /// bitpolar's QJL-corrected estimate of <query, x> (see detail::estimate_qjl); needs m > 0. O(p + m).
  float estimate_qjl(const PreparedQuery& query, const std::uint8_t* record) const;

 private:
  RecordLayout layout_;
  const Codebook* codebook_;
  std::vector<std::uint32_t> rotation_signs_;
  std::vector<float> projection_matrix_;
  float inv_alpha_;
};

}  // namespace micache::detail
