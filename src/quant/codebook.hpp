// Private: Lloyd-Max scalar codebooks for one coordinate of a randomly rotated vector.
#pragma once

#include <cstdint>
#include <vector>

namespace micache::detail {

/// An optimal scalar quantiser of t = sqrt(p) * u_i, u uniform on the unit
/// sphere of R^p (the scaled coordinate of a randomly rotated vector, with
/// E[t^2] = 1 and density proportional to (1 - t^2/p)^((p-3)/2) on |t| < sqrt(p):
/// the arcsine law at p = 2, close to N(0,1) for large p).
struct Codebook {
  std::uint32_t bits;
  std::vector<float> centroids;   ///< 2^bits, ascending, symmetric about 0 (c[L-1-k] == -c[k])
  std::vector<float> boundaries;  ///< 2^bits - 1, ascending: midpoints of adjacent centroids (the middle one is 0)
  double distortion;              ///< D = E[(Q(t) - t)^2] of these f32 centroids and boundaries, under the density
};

/// The Lloyd-Max codebook for rotation size `padded_dim` (a power of two >= 2)
/// and `bits` (1..8).
///
/// Designed once per (padded_dim, bits) and kept for the life of the process
/// (thread-safe; later calls return the same object). Integrates in double on
/// a 2^17-point midpoint grid in the angle theta, t = sqrt(p) sin(theta), where
/// the density is proportional to cos(theta)^(p-2) (bounded for every p, uniform
/// at p = 2), cut where it falls below 1e-40 of its peak. Starts from the
/// high-resolution optimum (point density proportional to density^(1/3)) and
/// solves the Lloyd-Max conditions (boundaries at midpoints, centroids at cell
/// means) by Newton's method until no centroid is 1e-10 from its cell mean:
/// at most 7 steps for every p from 2 to 131072 and bits 1..8, where plain
/// Lloyd iterations need thousands at 6 to 8 bits. About 10 ms per pair.
const Codebook& lloyd_max_codebook(std::uint32_t padded_dim, std::uint32_t bits);

}  // namespace micache::detail
