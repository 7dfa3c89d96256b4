// The quantiser under the compressed KV cache: bitpolar's config checks, the
// record format, the rotation, the Lloyd-Max codebooks, and the accuracy bounds
// on Gaussian data (reconstruction, inner products, attention output, bias).
#include <algorithm>
#include <bitset>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "micache/backend/detail/qjl_projection.hpp"
#include "micache/backend/detail/record_layout.hpp"
#include "micache/backend/detail/rotation.hpp"
#include "micache/kv_cache_config.hpp"
#include "src/quant/codebook.hpp"
#include "src/quant/vector_quantizer.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

using detail::Codebook;
using detail::lloyd_max_codebook;
using detail::make_record_layout;
using detail::RecordLayout;
using detail::VectorQuantizer;

double dot(const float* a, const float* b, std::size_t n) {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

double squared_norm(const std::vector<float>& x) { return dot(x.data(), x.data(), x.size()); }

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const auto n = static_cast<double>(x.size());
  double sx = 0.0, sy = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
  }
  double cxx = 0.0, cyy = 0.0, cxy = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    cxx += (x[i] - sx / n) * (x[i] - sx / n);
    cyy += (y[i] - sy / n) * (y[i] - sy / n);
    cxy += (x[i] - sx / n) * (y[i] - sy / n);
  }
  return cxy / std::sqrt(cxx * cyy);
}

/// softmax(scores / sqrt(dim)) . values, in double; values is [scores.size(), dim].
std::vector<double> attention_output(const std::vector<double>& scores, const std::vector<float>& values,
                                     std::size_t dim) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  const double top = *std::max_element(scores.begin(), scores.end()) * scale;
  std::vector<double> out(dim, 0.0);
  double total = 0.0;
  for (std::size_t t = 0; t < scores.size(); ++t) {
    const double weight = std::exp(scores[t] * scale - top);
    total += weight;
    for (std::size_t i = 0; i < dim; ++i) out[i] += weight * values[t * dim + i];
  }
  for (double& o : out) o /= total;
  return out;
}

/// Mean and standard error of a sample.
struct Sample {
  double mean;
  double standard_error;
};

Sample summarise(const std::vector<double>& values) {
  const auto n = static_cast<double>(values.size());
  double sum = 0.0, sum_sq = 0.0;
  for (double v : values) {
    sum += v;
    sum_sq += v * v;
  }
  const double mean = sum / n;
  return {mean, std::sqrt((sum_sq / n - mean * mean) / n)};
}

// ---------------------------------------------------------------------------
// KvCacheConfig: bitpolar's checks, order and messages.
// ---------------------------------------------------------------------------

KvCacheConfig valid_config() { return {.head_dim = 128, .bits = 4, .projections = 32, .seed = 42}; }

TEST(KvCacheConfig, ValidConfigPasses) {
  EXPECT_NO_THROW(valid_config().validate());
  KvCacheConfig config = valid_config();
  config.head_dim = 131070;
  config.bits = 1;
  config.value_bits = 8;
  config.projections = 65535;
  config.estimator = ScoreEstimator::Qjl;
  EXPECT_NO_THROW(config.validate());
}

TEST(KvCacheConfig, DefaultsAreBitpolarsDocumentedValues) {
  const KvCacheConfig config;
  EXPECT_EQ(config.bits, 4u);
  EXPECT_EQ(config.value_bits, 0u);  // same as bits
  EXPECT_EQ(config.estimator, ScoreEstimator::Mse);
  expect_error([&] { config.validate(); }, ErrorCode::ZeroDimension, "dimension must be > 0");
}

TEST(KvCacheConfig, ZeroHeadDimIsZeroDimension) {
  KvCacheConfig config = valid_config();
  config.head_dim = 0;
  expect_error([&] { config.validate(); }, ErrorCode::ZeroDimension, "dimension must be > 0");
}

TEST(KvCacheConfig, OddHeadDimIsOddDimension) {
  KvCacheConfig config = valid_config();
  config.head_dim = 7;
  expect_error([&] { config.validate(); }, ErrorCode::OddDimension, "dimension must be even, got 7");
}

TEST(KvCacheConfig, HeadDimAbove131070IsDimensionTooLarge) {
  KvCacheConfig config = valid_config();
  config.head_dim = 131072;
  expect_error([&] { config.validate(); }, ErrorCode::DimensionTooLarge,
               "dimension 131072 too large for compact format (max 131070)");
}

TEST(KvCacheConfig, BitsOutsideOneToSixteenAreInvalidBitWidth) {
  for (unsigned bits : {0u, 17u, 255u}) {
    KvCacheConfig config = valid_config();
    config.bits = bits;
    expect_error([&] { config.validate(); }, ErrorCode::InvalidBitWidth,
                 "bit width must be 1..=16, got " + std::to_string(bits));
  }
}

TEST(KvCacheConfig, BitsNineToSixteenAreBitpolarsButNotOurs) {
  for (unsigned bits = 9; bits <= 16; ++bits) {
    KvCacheConfig config = valid_config();
    config.bits = bits;
    expect_error(
        [&] { config.validate(); }, ErrorCode::InvalidBitWidth,
        "bit width " + std::to_string(bits) + " is valid in bitpolar but micache packs at most 8 bits per coordinate");
  }
}

TEST(KvCacheConfig, NonzeroValueBitsAreCheckedLikeBits) {
  KvCacheConfig config = valid_config();
  config.value_bits = 17;
  expect_error([&] { config.validate(); }, ErrorCode::InvalidBitWidth, "bit width must be 1..=16, got 17");
  config.value_bits = 9;
  expect_error([&] { config.validate(); }, ErrorCode::InvalidBitWidth,
               "bit width 9 is valid in bitpolar but micache packs at most 8 bits per coordinate");
}

TEST(KvCacheConfig, ZeroProjectionsIsZeroProjections) {
  KvCacheConfig config = valid_config();
  config.projections = 0;
  expect_error([&] { config.validate(); }, ErrorCode::ZeroProjections, "projections must be > 0");
}

TEST(KvCacheConfig, ProjectionsAbove65535AreDimensionTooLarge) {
  KvCacheConfig config = valid_config();
  config.projections = 65536;
  expect_error([&] { config.validate(); }, ErrorCode::DimensionTooLarge,
               "dimension 65536 too large for compact format (max 65535)");
}

TEST(KvCacheConfig, ChecksRunInBitpolarsOrder) {
  KvCacheConfig config{.head_dim = 0, .bits = 0, .projections = 0, .seed = 0, .value_bits = 99};
  expect_error([&] { config.validate(); }, ErrorCode::ZeroDimension, "dimension must be > 0");
  config.head_dim = 9;
  expect_error([&] { config.validate(); }, ErrorCode::OddDimension, "dimension must be even, got 9");
  config.head_dim = 262144;
  expect_error([&] { config.validate(); }, ErrorCode::DimensionTooLarge,
               "dimension 262144 too large for compact format (max 131070)");
  config.head_dim = 64;
  expect_error([&] { config.validate(); }, ErrorCode::InvalidBitWidth, "bit width must be 1..=16, got 0");
  config.bits = 4;
  expect_error([&] { config.validate(); }, ErrorCode::InvalidBitWidth, "bit width must be 1..=16, got 99");
  config.value_bits = 0;
  expect_error([&] { config.validate(); }, ErrorCode::ZeroProjections, "projections must be > 0");
}

TEST(KvCacheConfig, NewErrorCodesHaveNames) {
  EXPECT_STREQ(to_string(ErrorCode::ZeroDimension), "ZeroDimension");
  EXPECT_STREQ(to_string(ErrorCode::OddDimension), "OddDimension");
  EXPECT_STREQ(to_string(ErrorCode::InvalidBitWidth), "InvalidBitWidth");
  EXPECT_STREQ(to_string(ErrorCode::ZeroProjections), "ZeroProjections");
  EXPECT_STREQ(to_string(ErrorCode::DimensionTooLarge), "DimensionTooLarge");
}

// ---------------------------------------------------------------------------
// RecordLayout and code packing.
// ---------------------------------------------------------------------------

static_assert(make_record_layout(128, 4, 32).record_bytes == 76, "usable in constant expressions");

TEST(RecordLayout, KeyAndValueRecordsAtHeadDim128FourBits) {
  const RecordLayout key = make_record_layout(128, 4, 32);
  EXPECT_EQ(key.padded_dim, 128u);
  EXPECT_EQ(key.code_bytes, 64u);
  EXPECT_EQ(key.norm_offset, 64u);
  EXPECT_EQ(key.residual_norm_offset, 68u);
  EXPECT_EQ(key.sign_offset, 72u);
  EXPECT_EQ(key.record_bytes, 76u);  // 4.75 bits per value; bitpolar holds 395 B in memory

  const RecordLayout value = make_record_layout(128, 4, 0);
  EXPECT_EQ(value.norm_offset, 64u);
  EXPECT_EQ(value.record_bytes, 68u);
  EXPECT_EQ(value.residual_norm_offset, 68u);  // absent
  EXPECT_EQ(value.sign_offset, 68u);           // absent
}

TEST(RecordLayout, Dim96PadsToARotationOf128) {
  const RecordLayout layout = make_record_layout(96, 3, 24);
  EXPECT_EQ(layout.dim, 96u);
  EXPECT_EQ(layout.padded_dim, 128u);
  EXPECT_EQ(layout.code_bytes, 48u);  // 128 codes of 3 bits
  EXPECT_EQ(layout.record_bytes, 48u + 4u + 4u + 4u);
}

TEST(RecordLayout, Dim2HasOnePaddedWordOfCodes) {
  const RecordLayout layout = make_record_layout(2, 4, 16);
  EXPECT_EQ(layout.padded_dim, 2u);
  EXPECT_EQ(layout.code_bytes, 4u);  // 1 byte of codes, padded
  EXPECT_EQ(layout.sign_offset, 12u);
  EXPECT_EQ(layout.record_bytes, 16u);  // 2 bytes of signs, padded
}

TEST(RecordLayout, EverySectionIsFourByteAligned) {
  for (std::uint32_t dim : {2u, 6u, 10u, 96u, 100u, 128u, 130u}) {
    for (std::uint32_t bits = 1; bits <= 8; ++bits) {
      for (std::uint32_t m : {0u, 1u, 9u, 32u, 33u}) {
        const RecordLayout layout = make_record_layout(dim, bits, m);
        EXPECT_EQ(layout.code_bytes % 4, 0u);
        EXPECT_GE(layout.code_bytes * 8, layout.padded_dim * bits);
        EXPECT_LT(layout.code_bytes * 8, layout.padded_dim * bits + 32);
        EXPECT_EQ(layout.record_bytes % 4, 0u);
        EXPECT_EQ(layout.record_bytes, layout.code_bytes + (m == 0 ? 4u : 8u + (m + 31) / 32 * 4));
      }
    }
  }
}

TEST(RecordLayout, CodesAreOneLsbFirstBitStream) {
  std::uint8_t codes[4] = {};
  detail::pack_code(codes, 0, 3, 5);  // bits 0-2
  detail::pack_code(codes, 1, 3, 6);  // bits 3-5
  detail::pack_code(codes, 2, 3, 7);  // bits 6-8: straddles bytes 0 and 1
  EXPECT_EQ(codes[0], 0b11110101);
  EXPECT_EQ(codes[1], 0b00000001);
  EXPECT_EQ(detail::unpack_code(codes, 2, 3), 7u);
}

TEST(RecordLayout, PackUnpackRoundTripsEveryWidthAtEveryOffset) {
  std::mt19937 rng(5);
  for (std::uint32_t bits = 1; bits <= 8; ++bits) {
    constexpr std::uint32_t kCount = 37;  // odd, so codes end mid-byte
    std::vector<std::uint32_t> expected(kCount);
    std::vector<std::uint8_t> codes((kCount * bits + 7) / 8, 0);
    for (std::uint32_t i = 0; i < kCount; ++i) {
      expected[i] = static_cast<std::uint32_t>(rng()) & ((1u << bits) - 1u);
      detail::pack_code(codes.data(), i, bits, expected[i]);
    }
    for (std::uint32_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(detail::unpack_code(codes.data(), i, bits), expected[i]) << "bits " << bits << " index " << i;
    }
  }
}

// ---------------------------------------------------------------------------
// Rotation.
// ---------------------------------------------------------------------------

TEST(QuantizerRotation, FwhtIsTheUnnormalisedHadamardMatrix) {
  constexpr std::uint32_t kP = 8;
  const std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.5f, 0.0f, 4.0f, -1.0f, 2.0f};
  std::vector<float> y = x;
  detail::fwht(y.data(), kP);
  for (std::uint32_t i = 0; i < kP; ++i) {
    float expected = 0.0f;
    for (std::uint32_t j = 0; j < kP; ++j) {
      expected += (std::bitset<32>(i & j).count() % 2 == 0 ? 1.0f : -1.0f) * x[j];
    }
    EXPECT_EQ(y[i], expected) << i;
  }
}

TEST(QuantizerRotation, UnrotateInvertsRotateAndNormsArePreserved) {
  Gaussian gaussian(11);
  for (std::uint32_t dim : {2u, 6u, 96u, 128u, 1000u}) {
    const VectorQuantizer quantizer(dim, 4, 0, 3, 0);
    const std::uint32_t p = quantizer.layout().padded_dim;
    const std::vector<float> x = gaussian.vector(dim);
    std::vector<float> y(p);
    detail::rotate(x.data(), dim, y.data(), quantizer.rotation_signs().data(), p);
    EXPECT_NEAR(std::sqrt(squared_norm(y) / squared_norm(x)), 1.0, 1e-6) << "dim " << dim;

    std::vector<float> back(dim);
    detail::unrotate(y.data(), back.data(), quantizer.rotation_signs().data(), p, dim);
    double error = 0.0;
    for (std::uint32_t i = 0; i < dim; ++i) error += (back[i] - x[i]) * static_cast<double>(back[i] - x[i]);
    EXPECT_LT(std::sqrt(error / squared_norm(x)), 1e-6) << "dim " << dim;
  }
}

TEST(QuantizerRotation, TwoRoundsSpreadAOneHotVector) {
  constexpr std::uint32_t kP = 128;
  std::vector<float> one_hot(kP, 0.0f);
  one_hot[17] = 1.0f;

  // One Hadamard round alone: every scaled coordinate is +-1, a two-point law.
  std::vector<float> one_round = one_hot;
  detail::fwht(one_round.data(), kP);
  for (float v : one_round) ASSERT_EQ(std::abs(v), 1.0f);

  // Both rounds: scaled coordinates spread like a unit-variance bell curve.
  const VectorQuantizer quantizer(kP, 4, 0, 9, 0);
  std::vector<float> y(kP);
  detail::rotate(one_hot.data(), kP, y.data(), quantizer.rotation_signs().data(), kP);
  std::set<float> magnitudes;
  std::size_t within_one = 0;
  for (float v : y) {
    const float t = v * std::sqrt(static_cast<float>(kP));
    magnitudes.insert(std::abs(t));
    within_one += std::abs(t) < 0.99f ? 1 : 0;
  }
  EXPECT_GE(magnitudes.size(), 10u);
  // N(0,1) puts 68% inside (-1, 1); the two-point law 0%.
  EXPECT_GT(within_one, kP / 2);
  EXPECT_LT(within_one, kP * 7 / 8);
}

// ---------------------------------------------------------------------------
// Codebooks.
// ---------------------------------------------------------------------------

TEST(Codebook, CentroidsAscendSymmetricallyWithMidpointBoundaries) {
  for (std::uint32_t p : {2u, 4u, 128u, 1024u}) {
    for (std::uint32_t bits = 1; bits <= 8; ++bits) {
      const Codebook& codebook = lloyd_max_codebook(p, bits);
      const std::size_t levels = std::size_t{1} << bits;
      ASSERT_EQ(codebook.bits, bits);
      ASSERT_EQ(codebook.centroids.size(), levels);
      ASSERT_EQ(codebook.boundaries.size(), levels - 1);
      for (std::size_t k = 0; k < levels; ++k) {
        EXPECT_EQ(codebook.centroids[k], -codebook.centroids[levels - 1 - k]) << p << "/" << bits << "/" << k;
        if (k + 1 < levels) {
          EXPECT_LT(codebook.centroids[k], codebook.centroids[k + 1]);
          EXPECT_EQ(codebook.boundaries[k],
                    static_cast<float>((static_cast<double>(codebook.centroids[k]) + codebook.centroids[k + 1]) / 2));
        }
      }
      EXPECT_EQ(codebook.boundaries[levels / 2 - 1], 0.0f);
      EXPECT_LT(codebook.centroids.back(), std::sqrt(static_cast<float>(p)));
    }
  }
}

TEST(Codebook, DistortionAtP128IsWithinFivePercentOfGaussianLloydMax) {
  const double gaussian[] = {0.3634, 0.1175, 0.03454, 0.009497};
  for (std::uint32_t bits = 1; bits <= 4; ++bits) {
    EXPECT_NEAR(lloyd_max_codebook(128, bits).distortion / gaussian[bits - 1], 1.0, 0.05) << bits;
  }
}

TEST(Codebook, DistortionFallsAboutFourfoldPerBit) {
  for (std::uint32_t bits = 1; bits < 8; ++bits) {
    const double ratio = lloyd_max_codebook(128, bits + 1).distortion / lloyd_max_codebook(128, bits).distortion;
    EXPECT_GT(ratio, 0.2) << bits;
    EXPECT_LT(ratio, 0.35) << bits;
  }
}

TEST(Codebook, TwoDimensionsFollowTheArcsineLaw) {
  // t = sqrt(2) sin(theta), theta uniform: E|t| = 2 sqrt(2) / pi, and 1 bit leaves D = 1 - 8 / pi^2.
  const double pi = 3.14159265358979323846;
  const Codebook& codebook = lloyd_max_codebook(2, 1);
  EXPECT_NEAR(codebook.centroids[1], 2.0 * std::sqrt(2.0) / pi, 1e-6);
  EXPECT_NEAR(codebook.distortion, 1.0 - 8.0 / (pi * pi), 1e-6);
}

TEST(Codebook, IsDesignedOncePerPaddedDimAndBits) {
  EXPECT_EQ(&lloyd_max_codebook(128, 4), &lloyd_max_codebook(128, 4));
  EXPECT_NE(&lloyd_max_codebook(128, 4), &lloyd_max_codebook(128, 3));
  EXPECT_NE(&lloyd_max_codebook(128, 4), &lloyd_max_codebook(256, 4));
}

// ---------------------------------------------------------------------------
// VectorQuantizer: randomness, records, accuracy.
// ---------------------------------------------------------------------------

TEST(VectorQuantizer, SameSeedAndStreamGiveTheSameTables) {
  const VectorQuantizer a(128, 4, 32, 7, 3);
  const VectorQuantizer b(128, 4, 32, 7, 3);
  EXPECT_EQ(a.rotation_signs(), b.rotation_signs());
  EXPECT_EQ(a.projection_matrix(), b.projection_matrix());
}

TEST(VectorQuantizer, TablesAndRecordsArePinnedBySeedAndStream) {
  // Counter-based draws and Box-Muller in double: the same numbers with every
  // compiler and standard library, and the same record bytes on every backend.
  const VectorQuantizer quantizer(128, 4, 32, 42, 0);
  ASSERT_EQ(quantizer.rotation_signs().size(), 8u);
  EXPECT_EQ(quantizer.rotation_signs()[0], 0x79ac3b16u);
  EXPECT_EQ(quantizer.rotation_signs()[7], 0xcc30eee8u);
  ASSERT_EQ(quantizer.projection_matrix().size(), 32u * 128u);
  EXPECT_FLOAT_EQ(quantizer.projection_matrix()[0], 1.30280006f);
  EXPECT_FLOAT_EQ(quantizer.projection_matrix()[1], 0.159524873f);
  EXPECT_FLOAT_EQ(quantizer.projection_matrix()[4095], 1.46436608f);

  std::vector<float> x(128);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.25f;
  std::vector<std::uint8_t> record(quantizer.layout().record_bytes);
  quantizer.encode(x.data(), record.data());
  std::uint64_t fnv1a = 1469598103934665603ull;
  for (std::uint8_t byte : record) fnv1a = (fnv1a ^ byte) * 1099511628211ull;
  EXPECT_EQ(fnv1a, 0x1d92396520aaf2c7ull);
}

// FNV-1a over `bytes` bytes at `data`, continuing from `hash`.
std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t hash = 1469598103934665603ull) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  for (std::size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 1099511628211ull;
  return hash;
}

TEST(VectorQuantizer, CodebooksRecordsAndDecodesOfGaussianVectorsArePinned) {
  // Gaussian inputs make every product of the encoder round: a build that
  // fuses a multiply and an add (g++ on FMA hardware without
  // -ffp-contract=off) changes codebooks, residuals, norms and sign bits, so
  // these hashes move. The small-integer vector of the test above does not
  // catch it (its products are exact). Key records, value records, and the
  // smallest and an odd rotation size.
  struct Pinned {
    std::uint32_t dim, bits, projections;
    std::uint64_t hash;
  };
  const Pinned cases[] = {{128, 4, 32, 0x6c13198f4284dd71ull},
                           {96, 3, 24, 0x0a14907ba316c02dull},
                           {64, 5, 0, 0xdfcb193569af10b4ull},
                           {2, 2, 8, 0x7e78e7610e62cdabull}};
  for (const Pinned& pinned : cases) {
    const VectorQuantizer quantizer(pinned.dim, pinned.bits, pinned.projections, 11, 3);
    const Codebook& codebook = quantizer.codebook();
    std::uint64_t hash = fnv1a(codebook.centroids.data(), codebook.centroids.size() * sizeof(float));
    hash = fnv1a(codebook.boundaries.data(), codebook.boundaries.size() * sizeof(float), hash);
    Gaussian gaussian(pinned.dim + pinned.bits);
    std::vector<std::uint8_t> record(quantizer.layout().record_bytes);
    std::vector<float> decoded(pinned.dim);
    for (int v = 0; v < 32; ++v) {
      const std::vector<float> x = gaussian.vector(pinned.dim);
      quantizer.encode(x.data(), record.data());
      quantizer.decode(record.data(), decoded.data());
      hash = fnv1a(record.data(), record.size(), hash);
      hash = fnv1a(decoded.data(), decoded.size() * sizeof(float), hash);
    }
    EXPECT_EQ(hash, pinned.hash) << "dim " << pinned.dim << ", " << pinned.bits << " bits, " << pinned.projections
                                 << " projections: 0x" << std::hex << hash;
  }
}

TEST(VectorQuantizer, StreamsAndSeedsDrawIndependentTables) {
  // bitpolar's head h uses seed + h for its rotation and seed + h + 1 for its
  // QJL matrix, so head h's QJL matrix reuses head h+1's rotation stream.
  std::vector<VectorQuantizer> quantizers;
  for (std::uint64_t stream = 0; stream < 4; ++stream) quantizers.emplace_back(128, 4, 32, 7, stream);
  quantizers.emplace_back(128, 4, 32, 8, 0);
  for (std::size_t a = 0; a < quantizers.size(); ++a) {
    for (std::size_t b = a + 1; b < quantizers.size(); ++b) {
      const std::vector<std::uint32_t>& da = quantizers[a].rotation_signs();
      const std::vector<std::uint32_t>& db = quantizers[b].rotation_signs();
      std::size_t differing_bits = 0;
      for (std::size_t w = 0; w < da.size(); ++w) differing_bits += std::bitset<32>(da[w] ^ db[w]).count();
      EXPECT_GT(differing_bits, 96u) << a << " vs " << b;  // of 256; independent: 128 +- 8
      EXPECT_LT(differing_bits, 160u) << a << " vs " << b;
      const std::vector<float>& sa = quantizers[a].projection_matrix();
      const std::vector<float>& sb = quantizers[b].projection_matrix();
      const double correlation = dot(sa.data(), sb.data(), sa.size()) / static_cast<double>(sa.size());
      EXPECT_LT(std::abs(correlation), 0.08) << a << " vs " << b;  // independent: 0 +- 0.016
    }
  }
}

TEST(VectorQuantizer, ProjectionMatrixIsStandardNormalAndSignsAreFair) {
  const VectorQuantizer quantizer(128, 4, 32, 1, 0);
  const std::vector<float>& matrix = quantizer.projection_matrix();
  double sum = 0.0, sum_sq = 0.0;
  for (float v : matrix) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
  }
  const auto n = static_cast<double>(matrix.size());
  EXPECT_NEAR(sum / n, 0.0, 0.05);  // standard error 0.016
  EXPECT_NEAR(sum_sq / n, 1.0, 0.07);
  std::size_t negative = 0;
  for (std::uint32_t word : quantizer.rotation_signs()) negative += std::bitset<32>(word).count();
  EXPECT_GT(negative, 96u);
  EXPECT_LT(negative, 160u);

  EXPECT_TRUE(VectorQuantizer(128, 4, 0, 1, 1).projection_matrix().empty());
  const std::vector<std::uint32_t> small = VectorQuantizer(6, 4, 0, 1, 1).rotation_signs();
  ASSERT_EQ(small.size(), 1u);  // p = 8: 2p = 16 bits
  EXPECT_EQ(small[0] >> 16, 0u);
}

/// <row, x> the way a warp of 32 lanes computes it, written out lane by lane:
/// lane l sums the products of elements l, l + 32, ... in order, then at each
/// xor-butterfly width w = 16, 8, 4, 2, 1 every lane adds lane l ^ w's value.
/// Every lane must end with the same sum; lane 0's is returned.
float warp_lane_tree_dot(const float* row, const float* x, std::uint32_t n) {
  std::vector<float> lanes(32, 0.0f);
  for (std::uint32_t lane = 0; lane < 32; ++lane) {
    for (std::uint32_t i = lane; i < n; i += 32) lanes[lane] = lanes[lane] + row[i] * x[i];
  }
  for (std::uint32_t width = 16; width > 0; width >>= 1) {
    std::vector<float> next(32);
    for (std::uint32_t lane = 0; lane < 32; ++lane) next[lane] = lanes[lane] + lanes[lane ^ width];
    lanes = next;
  }
  for (std::uint32_t lane = 1; lane < 32; ++lane) EXPECT_EQ(float_bits(lanes[lane]), float_bits(lanes[0]));
  return lanes[0];
}

TEST(VectorQuantizer, QueryProjectionIsTheWarpLaneTreeBitForBit) {
  // The QJL projection of a prepared query (VectorQuantizer::prepare and the
  // CPU backend's score_records, both through detail::project_query) adds in
  // the CUDA prepare kernel's order, so the backends agree bit for bit.
  Gaussian gaussian(5);
  for (const std::uint32_t dim : {2u, 24u, 96u, 128u, 1000u}) {
    const VectorQuantizer quantizer(dim, 3, 40, 17, 1);
    const std::uint32_t p = quantizer.layout().padded_dim;
    const std::vector<float> q = gaussian.vector(dim);
    const VectorQuantizer::PreparedQuery prepared = quantizer.prepare(q.data());
    std::vector<float> projected(40);
    detail::project_query(quantizer.projection_matrix().data(), 40, p, prepared.rotated.data(), projected.data());
    ASSERT_EQ(prepared.projected.size(), 40u);
    for (std::uint32_t j = 0; j < 40; ++j) {
      const float* row = quantizer.projection_matrix().data() + std::size_t{j} * p;
      const float expected = warp_lane_tree_dot(row, prepared.rotated.data(), p);
      EXPECT_EQ(float_bits(prepared.projected[j]), float_bits(expected)) << "dim " << dim << ", row " << j;
      EXPECT_EQ(float_bits(projected[j]), float_bits(expected)) << "dim " << dim << ", row " << j;
    }
  }
}

TEST(VectorQuantizer, ZeroVectorEncodesAndDecodesToZeros) {
  const VectorQuantizer quantizer(128, 4, 32, 5, 0);
  const RecordLayout& layout = quantizer.layout();
  std::vector<std::uint8_t> record(layout.record_bytes, 0xab);
  const std::vector<float> zero(128, 0.0f);
  quantizer.encode(zero.data(), record.data());
  for (std::uint32_t i = 0; i < layout.padded_dim; ++i) {
    EXPECT_EQ(detail::unpack_code(record.data(), i, 4), 8u);  // bucket(0): the first positive centroid
  }
  EXPECT_EQ(detail::load_f32(record.data() + layout.norm_offset), 0.0f);
  EXPECT_EQ(detail::load_f32(record.data() + layout.residual_norm_offset), 0.0f);
  for (std::uint32_t b = layout.sign_offset; b < layout.record_bytes; ++b) EXPECT_EQ(record[b], 0u);

  std::vector<float> out(128, 1.0f);
  quantizer.decode(record.data(), out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  const auto query = quantizer.prepare(Gaussian(1).vector(128).data());
  EXPECT_EQ(quantizer.estimate_mse(query, record.data()), 0.0f);
  EXPECT_EQ(quantizer.estimate_qjl(query, record.data()), 0.0f);
}

TEST(VectorQuantizer, HugeAndTinyVectorsEncodeLikeTheirScaledCopies) {
  // ||x||^2 of the huge vector overflows f32 and that of the tiny one
  // underflows; the power-of-two scaling inside encode_record keeps every code,
  // the residual and its signs equal to those of x, and scales the norm exactly.
  const VectorQuantizer quantizer(128, 4, 32, 5, 0);
  const RecordLayout& layout = quantizer.layout();
  const std::vector<float> x = Gaussian(21).vector(128);
  std::vector<std::uint8_t> reference(layout.record_bytes);
  quantizer.encode(x.data(), reference.data());
  for (const int shift : {100, -80}) {  // squares overflow, squares underflow; the inputs stay normal floats
    std::vector<float> scaled(x);
    for (float& v : scaled) v = std::ldexp(v, shift);
    std::vector<std::uint8_t> record(layout.record_bytes);
    quantizer.encode(scaled.data(), record.data());
    EXPECT_TRUE(std::equal(record.begin(), record.begin() + layout.norm_offset, reference.begin())) << shift;
    EXPECT_TRUE(std::equal(record.begin() + layout.residual_norm_offset, record.end(),
                           reference.begin() + layout.residual_norm_offset))
        << shift;
    const float norm = detail::load_f32(reference.data() + layout.norm_offset);
    EXPECT_EQ(detail::load_f32(record.data() + layout.norm_offset), std::ldexp(norm, shift)) << shift;
  }
}

TEST(VectorQuantizer, RecordHoldsTheNormResidualNormAndResidualSigns) {
  // Recomputes the record's fields in double from the codes it holds.
  const VectorQuantizer quantizer(128, 3, 32, 6, 0);
  const RecordLayout& layout = quantizer.layout();
  const std::uint32_t p = layout.padded_dim;
  const std::vector<float> x = Gaussian(4).vector(128);
  std::vector<std::uint8_t> record(layout.record_bytes);
  quantizer.encode(x.data(), record.data());

  const double norm = std::sqrt(squared_norm(x));
  EXPECT_NEAR(detail::load_f32(record.data() + layout.norm_offset), norm, 1e-5 * norm);
  std::vector<float> y(p);
  detail::rotate(x.data(), 128, y.data(), quantizer.rotation_signs().data(), p);
  std::vector<double> residual(p);
  double residual_sq = 0.0;
  for (std::uint32_t i = 0; i < p; ++i) {
    const float centroid = quantizer.codebook().centroids[detail::unpack_code(record.data(), i, layout.bits)];
    residual[i] = y[i] / norm - centroid / std::sqrt(static_cast<double>(p));
    residual_sq += residual[i] * residual[i];
  }
  EXPECT_NEAR(detail::load_f32(record.data() + layout.residual_norm_offset), std::sqrt(residual_sq), 1e-5);
  for (std::uint32_t j = 0; j < layout.projections; ++j) {
    double projection = 0.0;
    for (std::uint32_t i = 0; i < p; ++i) projection += quantizer.projection_matrix()[j * p + i] * residual[i];
    const bool set = (record[layout.sign_offset + j / 8] >> (j % 8)) & 1u;
    if (std::abs(projection) > 1e-4) {
      EXPECT_EQ(set, projection > 0.0) << j;
    }
  }
}

TEST(VectorQuantizer, DecodeErrorIsTheCodebookDistortion) {
  // Relative error ||x - x_hat||^2 / ||x||^2 over Gaussian vectors is the
  // codebook's D at head_dim 128. At 96 (padded to 128) the error spreads over
  // all 128 rotated coordinates and the 32 padding ones are dropped: D * 96/128.
  for (std::uint32_t dim : {128u, 96u}) {
    for (std::uint32_t bits = 2; bits <= 8; ++bits) {
      const VectorQuantizer quantizer(dim, bits, 0, 21, bits);
      Gaussian gaussian(bits);
      std::vector<std::uint8_t> record(quantizer.layout().record_bytes);
      std::vector<float> decoded(dim);
      double error = 0.0, energy = 0.0;
      for (int n = 0; n < 200; ++n) {
        const std::vector<float> x = gaussian.vector(dim);
        quantizer.encode(x.data(), record.data());
        quantizer.decode(record.data(), decoded.data());
        for (std::uint32_t i = 0; i < dim; ++i) error += (x[i] - decoded[i]) * static_cast<double>(x[i] - decoded[i]);
        energy += squared_norm(x);
      }
      const double expected = quantizer.codebook().distortion * dim / quantizer.layout().padded_dim;
      EXPECT_LT(error / energy, 1.25 * expected) << "dim " << dim << " bits " << bits;
      EXPECT_GT(error / energy, 0.8 * expected) << "dim " << dim << " bits " << bits;
    }
  }
}

/// bitpolar's fidelity benchmark: 32 heads x 512 tokens x head_dim 128, N(0,1)
/// queries, keys and values, one query per head, per-head key and value
/// quantisers on independent streams. Keys are scored with estimate_mse;
/// values are decoded; the attention output softmax(q.K / sqrt(d)) . V is
/// compared with the exact one.
struct Fidelity {
  double mean_cosine = 0.0;    // of the attention output, mean over heads
  double min_cosine = 1.0;     // worst head
  double score_pearson = 0.0;  // estimate_mse against <q, k>, all 16384 pairs
};

Fidelity attention_fidelity(std::uint32_t key_bits, std::uint32_t value_bits) {
  constexpr std::uint32_t kHeads = 32, kTokens = 512, kDim = 128, kProjections = 32;
  Gaussian gaussian(2024);
  Fidelity fidelity;
  std::vector<double> exact_scores, estimated_scores;
  for (std::uint32_t h = 0; h < kHeads; ++h) {
    const VectorQuantizer key_quantizer(kDim, key_bits, kProjections, 42, 2 * h);
    const VectorQuantizer value_quantizer(kDim, value_bits, 0, 42, 2 * h + 1);
    const std::vector<float> q = gaussian.vector(kDim);
    const std::vector<float> keys = gaussian.vector(kTokens * kDim);
    const std::vector<float> values = gaussian.vector(kTokens * kDim);
    const auto query = key_quantizer.prepare(q.data());
    std::vector<std::uint8_t> record(key_quantizer.layout().record_bytes);
    std::vector<double> exact(kTokens), estimated(kTokens);
    std::vector<float> decoded(kTokens * kDim);
    for (std::uint32_t t = 0; t < kTokens; ++t) {
      exact[t] = dot(q.data(), &keys[t * kDim], kDim);
      key_quantizer.encode(&keys[t * kDim], record.data());
      estimated[t] = key_quantizer.estimate_mse(query, record.data());
      std::vector<std::uint8_t> value_record(value_quantizer.layout().record_bytes);
      value_quantizer.encode(&values[t * kDim], value_record.data());
      value_quantizer.decode(value_record.data(), &decoded[t * kDim]);
    }
    const double c = cosine(attention_output(exact, values, kDim), attention_output(estimated, decoded, kDim));
    fidelity.mean_cosine += c / kHeads;
    fidelity.min_cosine = std::min(fidelity.min_cosine, c);
    exact_scores.insert(exact_scores.end(), exact.begin(), exact.end());
    estimated_scores.insert(estimated_scores.end(), estimated.begin(), estimated.end());
  }
  fidelity.score_pearson = pearson(exact_scores, estimated_scores);
  return fidelity;
}

TEST(QuantizerAccuracy, InnerProductPearsonAtFourBitsIsAtLeast099) {
  // bitpolar: 0.8244 at 4 bits (10K Gaussian pairs).
  EXPECT_GE(attention_fidelity(4, 4).score_pearson, 0.99);
}

// The issue asks for a mean cosine >= 0.995 at 4 bits and >= 0.98 at 3 bits.
// Those cannot hold when keys and values are both quantised with b bits: the
// score error and the value error each cost about D/2 of cosine, so
// cos ~= 1 - (D_keys + D_values) / 2 = 0.9907 at 4 bits and 0.966 at 3 (D from
// the codebooks at p = 128; with either K or V exact, 4 bits gives 0.995). Even
// the rate-distortion limit D = 4^-b would give only 0.9961 and 0.984. On other
// data seeds the mean ranges over 0.9898..0.9914 at 4 bits and 0.961..0.968 at 3,
// the worst head 0.983..0.988 and 0.916..0.953. What these tests assert: the
// measured mean is that prediction, far above bitpolar (0.9206 at 4 bits, 0.8143
// at 3), and the issue's 0.995 is met with 5-bit codes.
double predicted_cosine(std::uint32_t key_bits, std::uint32_t value_bits) {
  return 1.0 - (lloyd_max_codebook(128, key_bits).distortion + lloyd_max_codebook(128, value_bits).distortion) / 2;
}

TEST(QuantizerAccuracy, AttentionCosineAtFourBitsIsTheDistortionBound) {
  const Fidelity fidelity = attention_fidelity(4, 4);
  EXPECT_NEAR(fidelity.mean_cosine, predicted_cosine(4, 4), 0.002);
  EXPECT_GE(fidelity.mean_cosine, 0.989);
  EXPECT_GE(fidelity.min_cosine, 0.98);
}

TEST(QuantizerAccuracy, AttentionCosineAtThreeBitsIsTheDistortionBound) {
  const Fidelity fidelity = attention_fidelity(3, 3);
  EXPECT_NEAR(fidelity.mean_cosine, predicted_cosine(3, 3), 0.006);
  EXPECT_GE(fidelity.mean_cosine, 0.96);
  EXPECT_GE(fidelity.min_cosine, 0.91);
}

TEST(QuantizerAccuracy, AttentionCosineAtFiveBitsMeetsTheIssuesTarget) {
  const Fidelity fidelity = attention_fidelity(5, 5);
  EXPECT_GE(fidelity.mean_cosine, 0.995);
  EXPECT_GE(fidelity.min_cosine, 0.99);
}

TEST(QuantizerAccuracy, BothEstimatorsAreUnbiasedAndMseHasLessVariance) {
  // 10 quantisers (random S and rotations) x 1000 pairs with k = q + noise, so
  // <q, k> ~= 128: the plain MSE reconstruction shrinks it by D (about 1.2 at
  // 4 bits), far beyond the standard error, and the 1/(1 - D) factor removes that.
  constexpr std::uint32_t kDim = 128;
  Gaussian gaussian(77);
  std::vector<double> qjl_error, mse_error, plain_error, exact;
  float inv_alpha = 0.0f;
  for (std::uint64_t stream = 0; stream < 10; ++stream) {
    const VectorQuantizer quantizer(kDim, 4, 32, 42, stream);
    inv_alpha = quantizer.inv_alpha();
    std::vector<std::uint8_t> record(quantizer.layout().record_bytes);
    for (int n = 0; n < 1000; ++n) {
      const std::vector<float> q = gaussian.vector(kDim);
      std::vector<float> k = gaussian.vector(kDim);
      for (std::uint32_t i = 0; i < kDim; ++i) k[i] += q[i];
      quantizer.encode(k.data(), record.data());
      const auto query = quantizer.prepare(q.data());
      const double truth = dot(q.data(), k.data(), kDim);
      const double mse = quantizer.estimate_mse(query, record.data());
      exact.push_back(truth);
      qjl_error.push_back(quantizer.estimate_qjl(query, record.data()) - truth);
      mse_error.push_back(mse - truth);
      plain_error.push_back(mse / inv_alpha - truth);
    }
  }
  const Sample qjl = summarise(qjl_error);
  const Sample mse = summarise(mse_error);
  const Sample plain = summarise(plain_error);
  const double shrinkage = -lloyd_max_codebook(128, 4).distortion * summarise(exact).mean;
  EXPECT_LT(std::abs(qjl.mean), 3 * qjl.standard_error);
  EXPECT_LT(std::abs(mse.mean), 3 * mse.standard_error);
  EXPECT_NEAR(plain.mean, shrinkage, 3 * plain.standard_error);
  EXPECT_LT(plain.mean, -20 * plain.standard_error);
  // QJL with m = p/4 adds more variance than it removes (ScoreEstimator's default is Mse).
  EXPECT_GT(qjl.standard_error, 1.5 * mse.standard_error);
}

}  // namespace
}  // namespace micache::testing
