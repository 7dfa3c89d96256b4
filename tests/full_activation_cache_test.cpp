// FullActivationCache: candle-mi's tests ported, plus validation, views and stacking.
#include "test_support.hpp"

namespace micache::testing {
namespace {

class FullActivationCacheTest : public ::testing::TestWithParam<Device> {
 protected:
  Tensor layer(std::size_t seq, std::size_t d_model, std::uint32_t seed, DType dtype = DType::F32) const {
    return Tensor::from_host(random_values(seq * d_model, seed, -1.0f, 1.0f), {seq, d_model}, dtype, GetParam());
  }
};

// candle-mi full_cache_basic: seq_len 10, d_model 2304.
TEST_P(FullActivationCacheTest, FullCacheBasic) {
  FullActivationCache cache = FullActivationCache::with_capacity(2);
  EXPECT_TRUE(cache.is_empty());
  cache.push(Tensor::from_host(std::vector<float>(10 * 2304, 0.0f), {10, 2304}, DType::F32, GetParam()));
  cache.push(Tensor::from_host(std::vector<float>(10 * 2304, 0.0f), {10, 2304}, DType::F32, GetParam()));
  EXPECT_EQ(cache.n_layers(), 2u);
  EXPECT_EQ(cache.seq_len(), 10u);
  EXPECT_FALSE(cache.is_empty());
  EXPECT_EQ(cache.get_layer(0)->dims(), (std::vector<std::size_t>{10, 2304}));
  EXPECT_EQ(cache.get_position(0, 5).dims(), (std::vector<std::size_t>{2304}));
  EXPECT_THROW(cache.get_position(0, 10), Error);
  EXPECT_THROW(cache.get_position(5, 0), Error);
}

// candle-mi doc-test: one zeros((10, 128)) layer, get_position(0, 5).
TEST_P(FullActivationCacheTest, DocExampleGetPosition) {
  FullActivationCache cache = FullActivationCache::with_capacity(32);
  cache.push(Tensor::from_host(std::vector<float>(1280, 0.0f), {10, 128}, DType::F32, GetParam()));
  EXPECT_EQ(cache.get_position(0, 5).to_host_f32(), std::vector<float>(128, 0.0f));
}

TEST_P(FullActivationCacheTest, GetPositionIsAViewWithoutCopy) {
  FullActivationCache cache;
  cache.push(layer(7, 33, 1, DType::BF16));
  const Tensor row = cache.get_position(0, 4);
  EXPECT_TRUE(row.shares_storage_with(*cache.get_layer(0)));
  EXPECT_EQ(static_cast<const std::byte*>(row.data()),
            static_cast<const std::byte*>(cache.get_layer(0)->data()) + 4 * 33 * 2);
  const std::vector<float> all = cache.get_layer(0)->to_host_f32();
  EXPECT_EQ(row.to_host_f32(), std::vector<float>(all.begin() + 4 * 33, all.begin() + 5 * 33));
}

TEST_P(FullActivationCacheTest, ErrorsNameLayerPositionAndEmptiness) {
  FullActivationCache cache;
  expect_error([&] { (void)cache.seq_len(); }, ErrorCode::Hook, "cache is empty");
  cache.push(layer(10, 4, 2));
  expect_error([&] { cache.get_position(3, 0); }, ErrorCode::Hook, "layer 3 not in cache");
  expect_error([&] { cache.get_position(0, 10); }, ErrorCode::Hook, "position 10 out of range (seq_len=10)");
  expect_error([&] { cache.stack_position(12); }, ErrorCode::Hook, "position 12 out of range (seq_len=10)");
}

TEST_P(FullActivationCacheTest, PushRejectsWrongRankAndKeepsCache) {
  FullActivationCache cache;
  cache.push(layer(10, 4, 3));
  expect_error([&] { cache.push(Tensor::from_host(std::vector<float>(40, 0.f), {1, 10, 4}, DType::F32, GetParam())); },
               ErrorCode::Shape, "activation must be [seq_len, d_model], got rank 3 [1, 10, 4]");
  EXPECT_EQ(cache.n_layers(), 1u);
}

TEST_P(FullActivationCacheTest, PushRejectsLayerOfAnotherShapeAndKeepsCache) {
  FullActivationCache cache;
  cache.push(layer(10, 4, 4));
  expect_error([&] { cache.push(layer(9, 4, 5)); }, ErrorCode::Shape, "layer 1 activation [9, 4] differs from layer 0 [10, 4]");
  EXPECT_EQ(cache.n_layers(), 1u);
  EXPECT_EQ(cache.seq_len(), 10u);
}

TEST_P(FullActivationCacheTest, PushRejectsLayerOfAnotherDtype) {
  FullActivationCache cache;
  cache.push(layer(2, 4, 6));
  const std::string where = GetParam().to_string();
  expect_error([&] { cache.push(layer(2, 4, 7, DType::F16)); }, ErrorCode::Config,
               "layer 1 is f16 on " + where + ", layer 0 is f32 on " + where);
  EXPECT_EQ(cache.n_layers(), 1u);
}

TEST_P(FullActivationCacheTest, StackPositionGathersEveryLayerOnTheDevice) {
  FullActivationCache cache;
  std::vector<std::vector<float>> hosts;
  for (std::uint32_t l = 0; l < 5; ++l) {
    cache.push(layer(6, 9, 10 + l, DType::BF16));
    hosts.push_back(cache.get_layer(l)->to_host_f32());
  }
  const Tensor stacked = cache.stack_position(3);
  EXPECT_EQ(stacked.shape(), (Shape{5, 9}));
  EXPECT_EQ(stacked.dtype(), DType::BF16);
  EXPECT_EQ(stacked.device(), GetParam());
  const std::vector<float> got = stacked.to_host_f32();
  for (std::size_t l = 0; l < 5; ++l) {
    for (std::size_t d = 0; d < 9; ++d) EXPECT_EQ(got[l * 9 + d], hosts[l][3 * 9 + d]);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, FullActivationCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
