// AttentionCache beyond candle-mi: validation, exact errors, head and batch
// selection, half-precision patterns, device-resident forms, top-k order.
#include <algorithm>
#include <limits>
#include <numeric>

#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Independent reference: head mean of element (b, q, k) of a [B, H, Q, K]
// host pattern, summing the heads in ascending order in f32.
float reference_mean(const std::vector<float>& p, const Shape& s, std::size_t b, std::size_t q, std::size_t k,
                     const std::vector<std::size_t>& heads) {
  float sum = 0.0f;
  for (std::size_t h : heads) sum += p[((b * s[1] + h) * s[2] + q) * s[3] + k];
  return sum / static_cast<float>(heads.size());
}

std::vector<std::size_t> all_heads(std::size_t n) {
  std::vector<std::size_t> heads(n);
  std::iota(heads.begin(), heads.end(), 0);
  return heads;
}

// Independent reference top-k: stable sort by weight descending, NaN last.
std::vector<std::pair<std::size_t, float>> reference_top_k(const std::vector<float>& row, std::size_t k) {
  std::vector<std::pair<std::size_t, float>> items(row.size());
  for (std::size_t i = 0; i < row.size(); ++i) items[i] = {i, row[i]};
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    if (std::isnan(a.second)) return false;
    if (std::isnan(b.second)) return true;
    return a.second > b.second;
  });
  items.resize(std::min(k, items.size()));
  return items;
}

class AttentionCacheTest : public ::testing::TestWithParam<Device> {
 protected:
  AttentionCache one_layer(const std::vector<float>& data, Shape shape, DType dtype = DType::F32) const {
    AttentionCache cache;
    cache.push(Tensor::from_host(data, std::move(shape), dtype, GetParam()));
    return cache;
  }

  AttentionCache sample_cache() const {
    std::vector<float> data(32, 0.25f);
    for (int q = 0; q < 4; ++q) {
      for (int k = 0; k < 4; ++k) data[16 + q * 4 + k] = q == k ? 0.70f : 0.10f;
    }
    return one_layer(data, {1, 2, 4, 4});
  }

  // A single-head, single-row pattern holding `row`: its head mean is `row` exactly.
  AttentionCache row_cache(const std::vector<float>& row) const { return one_layer(row, {1, 1, 1, row.size()}); }
};

TEST_P(AttentionCacheTest, LayerOutOfRangeNamesLayer) {
  expect_error([&] { sample_cache().attention_from_position(5, 0); }, ErrorCode::Hook,
               "layer 5 not in attention cache");
}

TEST_P(AttentionCacheTest, QueryPositionOutOfRangeNamesSeqQ) {
  expect_error([&] { sample_cache().attention_from_position(0, 10); }, ErrorCode::Hook,
               "position 10 out of range (seq_q=4)");
}

TEST_P(AttentionCacheTest, KeyPositionOutOfRangeNamesSeqK) {
  expect_error([&] { sample_cache().attention_to_position(0, 4); }, ErrorCode::Hook,
               "position 4 out of range (seq_k=4)");
}

TEST_P(AttentionCacheTest, BatchOutOfRangeIsHookError) {
  expect_error([&] { sample_cache().attention_from_position(0, 0, {.batch = 1, .heads = {}}); }, ErrorCode::Hook,
               "batch 1 out of range (batch=1)");
}

TEST_P(AttentionCacheTest, HeadOutOfRangeIsHookError) {
  expect_error([&] { sample_cache().attention_from_position(0, 0, {.batch = 0, .heads = {0, 5}}); },
               ErrorCode::Hook, "head 5 out of range (heads=2)");
}

TEST_P(AttentionCacheTest, RepeatedHeadIsConfigError) {
  expect_error([&] { sample_cache().attention_to_position(0, 0, {.batch = 0, .heads = {1, 1}}); },
               ErrorCode::Config, "head 1 selected twice");
}

TEST_P(AttentionCacheTest, PushRejectsRankOtherThanFourAndKeepsCache) {
  AttentionCache cache = sample_cache();
  const void* before = cache.get_layer(0)->data();
  expect_error([&] { cache.push(Tensor::from_host(std::vector<float>(16, 0.1f), {4, 4}, DType::F32, GetParam())); },
               ErrorCode::Shape, "pattern must be [batch, heads, seq_q, seq_k], got rank 2 [4, 4]");
  EXPECT_EQ(cache.n_layers(), 1u);
  EXPECT_EQ(cache.get_layer(0)->data(), before);
}

TEST_P(AttentionCacheTest, PushRejectsShapeDifferentFromLayerZeroAndKeepsCache) {
  AttentionCache cache = sample_cache();
  expect_error(
      [&] { cache.push(Tensor::from_host(std::vector<float>(50, 0.1f), {1, 2, 5, 5}, DType::F32, GetParam())); },
      ErrorCode::Shape, "layer 1 pattern [1, 2, 5, 5] differs from layer 0 [1, 2, 4, 4]");
  EXPECT_EQ(cache.n_layers(), 1u);
  EXPECT_NEAR(cache.attention_from_position(0, 0)[0], 0.475f, 1e-6f);
}

TEST_P(AttentionCacheTest, PushRejectsZeroDimension) {
  AttentionCache cache;
  expect_error([&] { cache.push(Tensor::empty({1, 2, 0, 4}, DType::F32, GetParam())); }, ErrorCode::Shape,
               "pattern [1, 2, 0, 4] has a zero dimension");
  EXPECT_TRUE(cache.is_empty());
}

TEST_P(AttentionCacheTest, PushRejectsIntegerPattern) {
  AttentionCache cache;
  expect_error([&] { cache.push(Tensor::empty({1, 1, 2, 2}, DType::I32, GetParam())); }, ErrorCode::Config,
               "pattern dtype must be f32, f16 or bf16, got i32");
  EXPECT_TRUE(cache.is_empty());
}

TEST_P(AttentionCacheTest, PushRejectsUndefinedTensor) {
  AttentionCache cache;
  expect_error([&] { cache.push(Tensor()); }, ErrorCode::Config, "pattern: undefined tensor");
}

TEST_P(AttentionCacheTest, TopKZeroReturnsNothing) {
  EXPECT_TRUE(sample_cache().top_attended_positions(0, 0, 0).empty());
}

TEST_P(AttentionCacheTest, TopKZeroStillValidatesPosition) {
  expect_error([&] { sample_cache().top_attended_positions(0, 9, 0); }, ErrorCode::Hook,
               "position 9 out of range (seq_q=4)");
}

TEST_P(AttentionCacheTest, TopKBreaksTiesByLowerIndex) {
  const auto top = row_cache({0.2f, 0.5f, 0.2f, 0.5f, 0.1f}).top_attended_positions(0, 0, 5);
  const std::vector<std::pair<std::size_t, float>> expected{{1, 0.5f}, {3, 0.5f}, {0, 0.2f}, {2, 0.2f}, {4, 0.1f}};
  EXPECT_EQ(top, expected);
}

TEST_P(AttentionCacheTest, TopKPutsNaNAfterEveryNumber) {
  const auto top = row_cache({kNaN, 0.1f, kInf, -kInf, kNaN, 0.3f}).top_attended_positions(0, 0, 6);
  ASSERT_EQ(top.size(), 6u);
  const std::vector<std::size_t> order{2, 5, 1, 3, 0, 4};
  for (std::size_t j = 0; j < 6; ++j) EXPECT_EQ(top[j].first, order[j]) << "rank " << j;
  EXPECT_EQ(top[0].second, kInf);
  EXPECT_EQ(top[3].second, -kInf);
  EXPECT_TRUE(std::isnan(top[4].second));
  EXPECT_TRUE(std::isnan(top[5].second));
}

TEST_P(AttentionCacheTest, TopKTreatsNegativeZeroAsZero) {
  const auto top = row_cache({-0.0f, 0.0f, -1.0f}).top_attended_positions(0, 0, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].first, 0u);
  EXPECT_EQ(top[1].first, 1u);
  EXPECT_EQ(top[2].first, 2u);
}

TEST_P(AttentionCacheTest, HeadSelectionAveragesOnlyChosenHeads) {
  const std::vector<float> head1 = sample_cache().attention_from_position(0, 1, {.batch = 0, .heads = {1}});
  EXPECT_EQ(head1, (std::vector<float>{0.10f, 0.70f, 0.10f, 0.10f}));
}

TEST_P(AttentionCacheTest, ListingEveryHeadEqualsDefault) {
  const AttentionCache cache = sample_cache();
  EXPECT_EQ(cache.attention_to_position(0, 2, {.batch = 0, .heads = {1, 0}}), cache.attention_to_position(0, 2));
}

TEST_P(AttentionCacheTest, BatchIndexSelectsThatBatchElement) {
  // [2, 1, 2, 2]: batch 0 holds 1..4, batch 1 holds 5..8.
  const AttentionCache cache = one_layer({1, 2, 3, 4, 5, 6, 7, 8}, {2, 1, 2, 2});
  EXPECT_EQ(cache.attention_from_position(0, 1, {.batch = 1, .heads = {}}), (std::vector<float>{7, 8}));
  EXPECT_EQ(cache.attention_to_position(0, 0, {.batch = 1, .heads = {}}), (std::vector<float>{5, 7}));
}

TEST_P(AttentionCacheTest, HalfPrecisionPatternsAverageTheStoredValues) {
  const Shape shape{2, 5, 9, 13};
  const std::vector<float> data = random_softmax_rows(2 * 5 * 9, 13, 7);
  for (DType dtype : {DType::F16, DType::BF16}) {
    const std::vector<float> stored = rounded_to(data, dtype);
    const AttentionCache cache = one_layer(data, shape, dtype);
    std::vector<float> expected(13);
    for (std::size_t k = 0; k < 13; ++k) expected[k] = reference_mean(stored, shape, 1, 4, k, {0, 2, 3});
    expect_same_bits(cache.attention_from_position(0, 4, {.batch = 1, .heads = {3, 0, 2}}), expected);
  }
}

TEST_P(AttentionCacheTest, HeadMeanRowsEqualRowQueriesAndColumnsEqualColumnQueries) {
  const Shape shape{1, 6, 11, 17};
  const AttentionCache cache = one_layer(random_softmax_rows(66, 17, 11), shape, DType::BF16);
  const Tensor mean = cache.head_mean(0);
  ASSERT_EQ(mean.shape(), (Shape{11, 17}));
  EXPECT_EQ(mean.device(), GetParam());
  const std::vector<float> grid = mean.to_host_f32();
  for (std::size_t q = 0; q < 11; ++q) {
    const std::vector<float> row(grid.begin() + static_cast<std::ptrdiff_t>(q * 17),
                                 grid.begin() + static_cast<std::ptrdiff_t>((q + 1) * 17));
    expect_same_bits(cache.attention_from_position(0, q), row);
  }
  for (std::size_t k = 0; k < 17; ++k) {
    std::vector<float> column(11);
    for (std::size_t q = 0; q < 11; ++q) column[q] = grid[q * 17 + k];
    expect_same_bits(cache.attention_to_position(0, k), column);
  }
}

TEST_P(AttentionCacheTest, HeadMeanMatchesReferenceOnRandomData) {
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const Shape shape{2, 7, 33, 41};
    const std::vector<float> data = random_softmax_rows(2 * 7 * 33, 41, 21);
    const std::vector<float> stored = rounded_to(data, dtype);
    const AttentionCache cache = one_layer(data, shape, dtype);
    std::vector<float> expected(33 * 41);
    for (std::size_t q = 0; q < 33; ++q) {
      for (std::size_t k = 0; k < 41; ++k) expected[q * 41 + k] = reference_mean(stored, shape, 1, q, k, {1, 4, 6});
    }
    expect_same_bits(cache.head_mean(0, {.batch = 1, .heads = {6, 1, 4}}).to_host_f32(), expected);
  }
}

TEST_P(AttentionCacheTest, AttentionReceivedSumsHeadMeanColumnsInChunkOrder) {
  const Shape shape{2, 5, 150, 37};  // 150 rows: three chunks of kColumnSumChunkRows
  const std::vector<float> data = random_softmax_rows(2 * 5 * 150, 37, 8);
  for (DType dtype : {DType::F32, DType::BF16}) {
    const std::vector<float> stored = rounded_to(data, dtype);
    const AttentionCache cache = one_layer(data, shape, dtype);
    std::vector<float> expected(37, 0.0f);
    for (std::size_t k = 0; k < 37; ++k) {
      float chunk = 0.0f;
      for (std::size_t q = 0; q < 150; ++q) {
        chunk += reference_mean(stored, shape, 1, q, k, {0, 3});
        if ((q + 1) % kColumnSumChunkRows == 0 || q + 1 == 150) {
          expected[k] += chunk;
          chunk = 0.0f;
        }
      }
    }
    const Tensor received = cache.attention_received(0, {.batch = 1, .heads = {3, 0}});
    EXPECT_EQ(received.device(), GetParam());
    expect_same_bits(received.to_host_f32(), expected);
  }
}

TEST_P(AttentionCacheTest, AttentionReceivedOverSoftmaxRowsTotalsTheQueryCount) {
  const AttentionCache cache = one_layer(random_softmax_rows(3 * 70, 20, 9), {1, 3, 70, 20});
  const std::vector<float> received = cache.attention_received(0).to_host_f32();
  EXPECT_NEAR(std::accumulate(received.begin(), received.end(), 0.0), 70.0, 1e-3);
}

TEST_P(AttentionCacheTest, TopAttendedAllMatchesReferenceForSmallAndLargeK) {
  const Shape shape{1, 5, 23, 67};
  const std::vector<float> data = random_softmax_rows(5 * 23, 67, 5);
  for (DType dtype : {DType::F32, DType::BF16}) {
    const std::vector<float> stored = rounded_to(data, dtype);
    const AttentionCache cache = one_layer(data, shape, dtype);
    for (std::size_t k : {1u, 7u, 32u, 33u, 67u, 100u}) {
      const TopK top = cache.top_attended_all(0, k);
      const std::size_t k_eff = std::min<std::size_t>(k, 67);
      ASSERT_EQ(top.indices.shape(), (Shape{23, k_eff}));
      const std::vector<std::int32_t> indices = top.indices.to_host_i32();
      const std::vector<float> weights = top.weights.to_host_f32();
      for (std::size_t q = 0; q < 23; ++q) {
        std::vector<float> row(67);
        for (std::size_t c = 0; c < 67; ++c) row[c] = reference_mean(stored, shape, 0, q, c, all_heads(5));
        const auto expected = reference_top_k(row, k);
        for (std::size_t j = 0; j < k_eff; ++j) {
          ASSERT_EQ(static_cast<std::size_t>(indices[q * k_eff + j]), expected[j].first)
              << dtype_name(dtype) << " k=" << k << " row " << q << " rank " << j;
          ASSERT_EQ(weights[q * k_eff + j], expected[j].second);
        }
      }
    }
  }
}

TEST_P(AttentionCacheTest, TopAttendedAllRejectsKZero) {
  expect_error([&] { sample_cache().top_attended_all(0, 0); }, ErrorCode::Config,
               "k must be at least 1 for a device top-k result");
}

TEST_P(AttentionCacheTest, DeviceFormsStayOnThePatternsDevice) {
  const AttentionCache cache = sample_cache();
  EXPECT_EQ(cache.attention_from_position_tensor(0, 0).device(), GetParam());
  EXPECT_EQ(cache.attention_to_position_tensor(0, 0).device(), GetParam());
  const TopK top = cache.top_attended_tensor(0, 0, 3);
  EXPECT_EQ(top.indices.device(), GetParam());
  EXPECT_EQ(top.indices.dtype(), DType::I32);
  EXPECT_EQ(top.weights.shape(), (Shape{1, 3}));
}

TEST_P(AttentionCacheTest, OneRowQueryAllocatesOnlyItsResult) {
  // A [1, 8, 64, 256] BF16 pattern; converting it whole (candle-mi) would
  // allocate 8*64*256*4 bytes. The row query allocates its seq_k floats only.
  const AttentionCache cache = one_layer(random_softmax_rows(8 * 64, 256, 3), {1, 8, 64, 256}, DType::BF16);
  Backend& backend = backend_for(GetParam());
  backend.synchronize({});
  const std::size_t before = backend.memory_stats().in_use;
  backend.reset_peak();
  (void)cache.attention_from_position(0, 17);
  EXPECT_EQ(backend.memory_stats().peak - before, 256 * sizeof(float));
  EXPECT_EQ(backend.memory_stats().in_use, before);
}

INSTANTIATE_TEST_SUITE_P(Backends, AttentionCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing

namespace micache::testing {
namespace {

// Top-k indices are int32 on every backend: a row of 2^31 keys is refused
// before any kernel reads it (the tensor wraps 4 bytes that claim 8 GiB).
TEST(AttentionCacheTopK, RowsLongerThanTheInt32IndexRangeAreAShapeError) {
  float storage = 0.5f;
  const std::size_t keys = std::size_t{1} << 31;
  AttentionCache cache;
  cache.push(Tensor::wrap(&storage, {1, 1, 1, keys}, DType::F32, Device::cpu(), {}));
  expect_error([&] { cache.top_attended_tensor(0, 0, 5); }, ErrorCode::Shape,
               "top-k over 2147483648 keys exceeds the int32 index range (max 2147483647)");
  expect_error([&] { cache.top_attended_all(0, 5); }, ErrorCode::Shape,
               "top-k over 2147483648 keys exceeds the int32 index range (max 2147483647)");
}

}  // namespace
}  // namespace micache::testing
