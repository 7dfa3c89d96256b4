// Random quantiser tables (signs, codebook, QJL matrices) for driving the
// compressed-record Backend ops with raw descriptors, on the host and in any
// backend's memory: shared by the conformance suite and the CUDA graph tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "conformance_support.hpp"
#include "micache/backend/detail/record_layout.hpp"

namespace micache::testing::conformance {

/// One quantiser per head for `heads` heads (detail/record_codec.hpp): rotation sign
/// bits, a shared codebook, and for key records an m x p projection matrix.
struct QuantiserTables {
  detail::RecordLayout layout{};
  std::size_t sign_words = 0;
  std::vector<std::uint32_t> signs;  ///< heads x sign_words
  std::vector<float> centroids;      ///< 2^bits, ascending
  std::vector<float> boundaries;     ///< 2^bits - 1, the midpoints of adjacent centroids
  std::vector<float> projections;    ///< heads x m x p, N(0, 1)

  const std::uint32_t* signs_of(std::size_t head) const { return signs.data() + head * sign_words; }
  const float* projections_of(std::size_t head) const {
    return layout.projections == 0 ? nullptr : projections.data() + head * layout.projections * layout.padded_dim;
  }
};

/// Random tables. The codebook has the Lloyd-Max shape without its design
/// cost: cells of equal width over [-3, 3], each centroid moved by up to 15%
/// of a cell, boundaries at the midpoints; kernels only look it up. Sign words
/// are random in full, bits past 2p included (no kernel may read them).
inline QuantiserTables make_tables(std::uint32_t dim, std::uint32_t bits, std::uint32_t projections, std::size_t heads,
                                   std::uint32_t seed) {
  QuantiserTables tables;
  tables.layout = detail::make_record_layout(dim, bits, projections);
  const std::size_t p = tables.layout.padded_dim;
  tables.sign_words = (2 * p + 31) / 32;
  std::mt19937 rng(seed);
  tables.signs.resize(heads * tables.sign_words);
  for (std::uint32_t& word : tables.signs) word = static_cast<std::uint32_t>(rng());
  const std::size_t levels = std::size_t{1} << bits;
  const double width = 6.0 / static_cast<double>(levels);
  std::uniform_real_distribution<double> jitter(-0.15, 0.15);
  for (std::size_t k = 0; k < levels; ++k) {
    tables.centroids.push_back(static_cast<float>(-3.0 + (static_cast<double>(k) + 0.5 + jitter(rng)) * width));
  }
  for (std::size_t k = 0; k + 1 < levels; ++k) {
    tables.boundaries.push_back(0.5f * (tables.centroids[k] + tables.centroids[k + 1]));
  }
  tables.projections = Gaussian(seed + 1).vector(heads * projections * p);
  return tables;
}

/// A quantiser's tables in one backend's memory.
class DeviceTables {
 public:
  DeviceTables(Backend& backend, const QuantiserTables& tables)
      : tables_(&tables),
        signs_(backend, bytes_of(tables.signs)),
        centroids_(backend, bytes_of(tables.centroids)),
        boundaries_(backend, bytes_of(tables.boundaries)),
        projections_(backend, bytes_of(tables.projections)) {}

  /// The ring of `heads` heads of `capacity` records in `records`, logical token 0 at slot `start`.
  RecordRing ring(const DeviceBuffer& records, std::size_t heads, std::size_t capacity, std::size_t start) const {
    RecordRing ring;
    ring.layout = tables_->layout;
    ring.records = records.at();
    ring.heads = heads;
    ring.capacity = capacity;
    ring.start = start;
    ring.signs = signs_.as<std::uint32_t>();
    ring.sign_words = tables_->sign_words;
    ring.centroids = centroids_.as<float>();
    ring.boundaries = boundaries_.as<float>();
    ring.projections = tables_->layout.projections > 0 ? projections_.as<float>() : nullptr;
    return ring;
  }

 private:
  const QuantiserTables* tables_;
  DeviceBuffer signs_;
  DeviceBuffer centroids_;
  DeviceBuffer boundaries_;
  DeviceBuffer projections_;
};

}  // namespace micache::testing::conformance
