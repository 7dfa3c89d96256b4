// ActivationCache: candle-mi's tests ported, plus conversion and validation.
#include "test_support.hpp"

namespace micache::testing {
namespace {

class ActivationCacheTest : public ::testing::TestWithParam<Device> {
 protected:
  Tensor zeros(std::size_t n) const {
    return Tensor::from_host(std::vector<float>(n, 0.0f), {n}, DType::F32, GetParam());
  }
};

// candle-mi cache_basic: two zeros(2048) layers.
TEST_P(ActivationCacheTest, CacheBasic) {
  const ActivationCache cache = ActivationCache::new_cache({zeros(2048), zeros(2048)});
  EXPECT_EQ(cache.n_layers(), 2u);
  EXPECT_NE(cache.get_layer(0), nullptr);
  EXPECT_NE(cache.get_layer(1), nullptr);
  EXPECT_EQ(cache.get_layer(2), nullptr);
}

// candle-mi cache_push: with_capacity(2), then one push.
TEST_P(ActivationCacheTest, CachePush) {
  ActivationCache cache = ActivationCache::with_capacity(2);
  EXPECT_TRUE(cache.is_empty());
  cache.push(zeros(2048));
  EXPECT_EQ(cache.n_layers(), 1u);
  EXPECT_FALSE(cache.is_empty());
}

// candle-mi doc-test: with_capacity(32) plus two zeros(128).
TEST_P(ActivationCacheTest, DocExampleTwoLayers) {
  ActivationCache cache = ActivationCache::with_capacity(32);
  cache.push(zeros(128));
  cache.push(zeros(128));
  EXPECT_EQ(cache.n_layers(), 2u);
}

TEST_P(ActivationCacheTest, ActivationsListsLayersInOrder) {
  const Tensor a = zeros(3);
  const Tensor b = zeros(5);
  const ActivationCache cache = ActivationCache::new_cache({a, b});
  ASSERT_EQ(cache.activations().size(), 2u);
  EXPECT_TRUE(cache.activations()[0].shares_storage_with(a));
  EXPECT_TRUE(cache.activations()[1].shares_storage_with(b));
}

TEST_P(ActivationCacheTest, ToF32VecsFlattensAndConvertsEveryDtype) {
  const std::vector<float> values{1.0f, -2.5f, 0.15625f, 3.0f, 1e-3f, 7.0f};
  ActivationCache cache;
  cache.push(Tensor::from_host(values, {2, 3}, DType::F32, GetParam()));
  cache.push(Tensor::from_host(values, {6}, DType::BF16, GetParam()));
  cache.push(Tensor::from_host(values, {3, 2}, DType::F16, GetParam()));
  const auto vecs = cache.to_f32_vecs();
  ASSERT_EQ(vecs.size(), 3u);
  EXPECT_EQ(vecs[0], values);
  EXPECT_EQ(vecs[1], rounded_to(values, DType::BF16));
  EXPECT_EQ(vecs[2], rounded_to(values, DType::F16));
}

TEST_P(ActivationCacheTest, PushRejectsUndefinedTensor) {
  ActivationCache cache;
  expect_error([&] { cache.push(Tensor()); }, ErrorCode::Config, "activation: undefined tensor");
  EXPECT_TRUE(cache.is_empty());
}

INSTANTIATE_TEST_SUITE_P(Backends, ActivationCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
