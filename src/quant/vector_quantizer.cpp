#include "src/quant/vector_quantizer.hpp"

#include <cmath>
#include <cstddef>

#include "micache/backend/detail/estimators.hpp"
#include "micache/backend/detail/qjl_projection.hpp"
#include "micache/backend/detail/record_codec.hpp"
#include "micache/backend/detail/rotation.hpp"

namespace micache::detail {
namespace {

enum Purpose : std::uint64_t { kRotationSigns = 1, kProjection = 2 };

/// splitmix64's finaliser (with its increment): a bijection of 64-bit words.
constexpr std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr std::uint64_t draw(std::uint64_t seed, std::uint64_t stream, Purpose purpose, std::uint64_t index) {
  return mix(mix(mix(mix(seed) ^ stream) ^ purpose) ^ index);
}

/// In (0, 1): the top 24 bits of `word`, plus 1/2, over 2^24.
double uniform(std::uint64_t word) { return (static_cast<double>(word >> 40) + 0.5) / 16777216.0; }

std::vector<std::uint32_t> make_rotation_signs(std::uint32_t p, std::uint64_t seed, std::uint64_t stream) {
  const std::uint32_t bits = 2 * p;
  std::vector<std::uint32_t> words((bits + 31) / 32);
  for (std::size_t w = 0; w < words.size(); ++w) {
    words[w] = static_cast<std::uint32_t>(draw(seed, stream, kRotationSigns, w) >> 32);
  }
  if (bits % 32 != 0) {
    words.back() &= (1u << (bits % 32)) - 1u;
  }
  return words;
}

std::vector<float> make_projection_matrix(std::uint32_t m, std::uint32_t p, std::uint64_t seed, std::uint64_t stream) {
  constexpr double kTwoPi = 6.28318530717958647692;
  std::vector<float> matrix(static_cast<std::size_t>(m) * p);  // p is even: whole Box-Muller pairs
  for (std::size_t k = 0; k < matrix.size() / 2; ++k) {
    const double r = std::sqrt(-2.0 * std::log(uniform(draw(seed, stream, kProjection, 2 * k))));
    const double angle = kTwoPi * uniform(draw(seed, stream, kProjection, 2 * k + 1));
    matrix[2 * k] = static_cast<float>(r * std::cos(angle));
    matrix[2 * k + 1] = static_cast<float>(r * std::sin(angle));
  }
  return matrix;
}

}  // namespace

VectorQuantizer::VectorQuantizer(std::uint32_t dim, std::uint32_t bits, std::uint32_t projections, std::uint64_t seed,
                                 std::uint64_t stream)
    : layout_(make_record_layout(dim, bits, projections)),
      codebook_(&lloyd_max_codebook(layout_.padded_dim, bits)),
      rotation_signs_(make_rotation_signs(layout_.padded_dim, seed, stream)),
      projection_matrix_(make_projection_matrix(projections, layout_.padded_dim, seed, stream)),
      inv_alpha_(static_cast<float>(1.0 / (1.0 - codebook_->distortion))) {}

void VectorQuantizer::encode(const float* x, std::uint8_t* record) const {
  std::vector<float> scratch(2 * static_cast<std::size_t>(layout_.padded_dim));
  encode_record(x, layout_, rotation_signs_.data(), codebook_->centroids.data(), codebook_->boundaries.data(),
                projection_matrix_.data(), scratch.data(), record);
}

void VectorQuantizer::decode(const std::uint8_t* record, float* out) const {
  std::vector<float> scratch(layout_.padded_dim);
  decode_record(record, layout_, rotation_signs_.data(), codebook_->centroids.data(), scratch.data(), out);
}

VectorQuantizer::PreparedQuery VectorQuantizer::prepare(const float* query) const {
  const std::uint32_t p = layout_.padded_dim;
  PreparedQuery prepared{std::vector<float>(p), std::vector<float>(layout_.projections)};
  rotate(query, layout_.dim, prepared.rotated.data(), rotation_signs_.data(), p);
  project_query(projection_matrix_.data(), layout_.projections, p, prepared.rotated.data(), prepared.projected.data());
  return prepared;
}

float VectorQuantizer::estimate_mse(const PreparedQuery& query, const std::uint8_t* record) const {
  return detail::estimate_mse(record, layout_, codebook_->centroids.data(), query.rotated.data(), inv_alpha_);
}

float VectorQuantizer::estimate_qjl(const PreparedQuery& query, const std::uint8_t* record) const {
  return detail::estimate_qjl(record, layout_, codebook_->centroids.data(), query.rotated.data(),
                              query.projected.data());
}

}  // namespace micache::detail
