// candle-mi's AttentionCache unit tests, ported with their numbers, on every backend.
#include "test_support.hpp"

namespace micache::testing {
namespace {

class CandleAttentionCache : public ::testing::TestWithParam<Device> {
 protected:
  // candle-mi's sample_cache(): one layer [1, 2, 4, 4]; head 0 uniform 0.25,
  // head 1 0.70 on the diagonal and 0.10 off it.
  AttentionCache sample_cache() const {
    std::vector<float> data(32, 0.25f);
    for (int q = 0; q < 4; ++q) {
      for (int k = 0; k < 4; ++k) data[16 + q * 4 + k] = q == k ? 0.70f : 0.10f;
    }
    AttentionCache cache = AttentionCache::with_capacity(1);
    cache.push(Tensor::from_host(data, {1, 2, 4, 4}, DType::F32, GetParam()));
    return cache;
  }
};

TEST_P(CandleAttentionCache, EmptyCache) {
  const AttentionCache cache = AttentionCache::with_capacity(32);
  EXPECT_EQ(cache.n_layers(), 0u);
  EXPECT_TRUE(cache.is_empty());
  EXPECT_EQ(cache.get_layer(0), nullptr);
}

TEST_P(CandleAttentionCache, PushAndGetLayer) {
  const AttentionCache cache = sample_cache();
  EXPECT_EQ(cache.n_layers(), 1u);
  EXPECT_FALSE(cache.is_empty());
  ASSERT_NE(cache.get_layer(0), nullptr);
  EXPECT_EQ(cache.get_layer(0)->dims(), (std::vector<std::size_t>{1, 2, 4, 4}));
  EXPECT_EQ(cache.get_layer(1), nullptr);
}

TEST_P(CandleAttentionCache, AttentionFromPositionValues) {
  const std::vector<float> attn = sample_cache().attention_from_position(0, 0);
  ASSERT_EQ(attn.size(), 4u);
  EXPECT_NEAR(attn[0], 0.475f, 1e-5f);
  EXPECT_NEAR(attn[1], 0.175f, 1e-5f);
  EXPECT_NEAR(attn[2], 0.175f, 1e-5f);
  EXPECT_NEAR(attn[3], 0.175f, 1e-5f);
}

TEST_P(CandleAttentionCache, AttentionFromPositionOutOfRange) {
  const AttentionCache cache = sample_cache();
  EXPECT_THROW(cache.attention_from_position(0, 10), Error);
  EXPECT_THROW(cache.attention_from_position(5, 0), Error);
}

TEST_P(CandleAttentionCache, AttentionToPositionValues) {
  const std::vector<float> attn = sample_cache().attention_to_position(0, 0);
  ASSERT_EQ(attn.size(), 4u);
  EXPECT_NEAR(attn[0], 0.475f, 1e-5f);
  EXPECT_NEAR(attn[1], 0.175f, 1e-5f);
}

TEST_P(CandleAttentionCache, AttentionToPositionOutOfRange) {
  const AttentionCache cache = sample_cache();
  EXPECT_THROW(cache.attention_to_position(0, 10), Error);
  EXPECT_THROW(cache.attention_to_position(5, 0), Error);
}

TEST_P(CandleAttentionCache, TopAttendedPositionsSorted) {
  const auto top = sample_cache().top_attended_positions(0, 0, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].first, 0u);
  EXPECT_NEAR(top[0].second, 0.475f, 1e-5f);
}

TEST_P(CandleAttentionCache, TopAttendedPositionsKLargerThanSeq) {
  EXPECT_EQ(sample_cache().top_attended_positions(0, 0, 100).size(), 4u);
}

TEST_P(CandleAttentionCache, PatternsSlice) { EXPECT_EQ(sample_cache().patterns().size(), 1u); }

// candle-mi's doc-test: push zeros [1, 8, 10, 10], query position 5 of layer 0.
TEST_P(CandleAttentionCache, DocExampleQueriesZeroPattern) {
  AttentionCache cache = AttentionCache::with_capacity(32);
  cache.push(Tensor::from_host(std::vector<float>(800, 0.0f), {1, 8, 10, 10}, DType::F32, GetParam()));
  EXPECT_EQ(cache.attention_from_position(0, 5), std::vector<float>(10, 0.0f));
}

INSTANTIATE_TEST_SUITE_P(Backends, CandleAttentionCache, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
