// Settings of a compressed KV cache: bitpolar's KvCacheConfig plus value bits and the score estimator.
#pragma once

#include <cstddef>
#include <cstdint>

namespace micache {

/// How a compressed cache estimates the attention score <q, k> from a key record.
///
/// Both are unbiased; they differ in variance. At head_dim 128, 4 bits and 32
/// projections the QJL correction adds about 6x more variance than it removes,
/// so `Mse` is the default and `Qjl` is there to reproduce bitpolar's estimator.
enum class ScoreEstimator {
  Mse,  ///< rotated-domain dot product with the codebook centroids, divided by 1 - distortion
  Qjl,  ///< the same dot product plus bitpolar's QJL sign-sketch estimate of the residual term
};

/// Settings of a compressed KV cache (bitpolar's `KvCacheConfig`, field for field,
/// plus `value_bits` and `estimator`).
///
/// bitpolar has no defaults; ours are the values its docs and examples use:
/// `bits = 4`; `projections` must be set (bitpolar recommends head_dim / 8 for KV
/// caches and head_dim / 4 for search; we recommend head_dim / 4, e.g. 32 at 128).
/// Unlike bitpolar, `bits` is the width of every rotated coordinate's code (a
/// scalar Lloyd-Max quantiser), not of a polar angle.
struct KvCacheConfig {
  std::size_t head_dim = 0;     ///< key/value vector length
  unsigned bits = 4;            ///< bits per rotated coordinate for keys (1..8)
  std::size_t projections = 0;  ///< QJL sign bits per key
  std::uint64_t seed = 0;       ///< seed of every rotation and projection matrix
  unsigned value_bits = 0;      ///< bits per rotated coordinate for values (1..8); 0 = same as `bits`
  ScoreEstimator estimator = ScoreEstimator::Mse;  ///< how scores are computed from key records

  /// Checks the settings in bitpolar's order, with bitpolar's messages:
  /// - ZeroDimension `dimension must be > 0` for head_dim 0;
  /// - OddDimension `dimension must be even, got 7`;
  /// - DimensionTooLarge `dimension 131072 too large for compact format (max 131070)` when head_dim / 2 > 65535;
  /// - InvalidBitWidth `bit width must be 1..=16, got 0` for `bits` (then nonzero `value_bits`) outside 1..16;
  /// - InvalidBitWidth `bit width 12 is valid in bitpolar but micache packs at most 8 bits per coordinate`
  ///   for 9..16, which bitpolar accepts and micache does not (codes are packed 1..8 bits wide);
  /// - ZeroProjections `projections must be > 0` (also with `ScoreEstimator::Mse`, as in bitpolar);
  /// - DimensionTooLarge `dimension 65536 too large for compact format (max 65535)` when projections > 65535.
  void validate() const;
};

}  // namespace micache
