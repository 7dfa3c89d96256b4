// MlaKvCache and ModelKvCache: bitpolar 0.3.4's MLA and model-cache tests
// ported, the latents' reconstruction bound, every error's code and message,
// the bytes each layer holds, and the builders' layouts, per device.
#include <cmath>
#include <limits>
#include <variant>

#include "test_support.hpp"

namespace micache::testing {
namespace {

// bitpolar's sample_config: head_dim 8, bits 4, projections 16, seed 42.
KvCacheConfig sample_config() { return {.head_dim = 8, .bits = 4, .projections = 16, .seed = 42}; }

std::vector<std::vector<float>> per_head(std::size_t heads, std::size_t dim, float value) {
  return std::vector<std::vector<float>>(heads, std::vector<float>(dim, value));
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

// One layer of each kind: Global (2 kv / 4 query heads), Window (same heads,
// window 3), Latent (latent_dim 8), Linear (10 floats), all at sample_config.
ModelKvCache one_layer_of_each_kind(Device device) {
  std::vector<LayerCache> layers;
  layers.emplace_back(std::in_place_type<GqaKvCache>, 2, 4, sample_config(), device);
  layers.emplace_back(std::in_place_type<SlidingWindowKvCache>, 2, 4, 3, sample_config(), device);
  layers.emplace_back(std::in_place_type<MlaKvCache>, 8, 4, 16, 42, device);
  layers.emplace_back(LinearState{.state = std::vector<float>(10, 0.5f), .state_dim = 10});
  return ModelKvCache(std::move(layers));
}

// Five tokens into the Global and Window layers and four latents into the Latent layer.
void fill(ModelKvCache& model) {
  for (int t = 0; t < 5; ++t) {
    std::get<GqaKvCache>(model.layer_mut(0)).push_token(per_head(2, 8, 0.1f), per_head(2, 8, 0.2f));
    std::get<SlidingWindowKvCache>(model.layer_mut(1)).push_token(per_head(2, 8, 0.1f), per_head(2, 8, 0.2f));
  }
  for (int t = 0; t < 4; ++t) std::get<MlaKvCache>(model.layer_mut(2)).push_latent(std::vector<float>(8, 0.3f));
}

class BitpolarPort : public ::testing::TestWithParam<Device> {};
class MlaKvCacheTest : public ::testing::TestWithParam<Device> {};
class ModelKvCacheTest : public ::testing::TestWithParam<Device> {};

// ---- bitpolar's kv_cache tests (MLA, model) ----

TEST_P(BitpolarPort, MlaCreation) {
  const MlaKvCache cache(512, 4, 32, 42, GetParam());
  EXPECT_EQ(cache.latent_dim(), 512u);
  EXPECT_TRUE(cache.is_empty());
}

TEST_P(BitpolarPort, MlaPushAndDecode) {
  MlaKvCache cache(8, 4, 16, 42, GetParam());
  cache.push_latent(std::vector<float>(8, 0.1f));
  cache.push_latent(std::vector<float>(8, 0.2f));
  EXPECT_EQ(cache.len(), 2u);
  const auto decoded = cache.decode_latents();
  ASSERT_EQ(decoded.size(), 2u);
  EXPECT_EQ(decoded[0].size(), 8u);
}

TEST_P(BitpolarPort, MlaDeepseekShorthand) {
  EXPECT_EQ(MlaKvCache::deepseek_v3(4, 32, 42, GetParam()).latent_dim(), 512u);
}

TEST_P(BitpolarPort, Llama3_8bCacheCreation) { EXPECT_EQ(llama3_8b_cache(4, 16, 42, GetParam()).num_layers(), 32u); }

TEST_P(BitpolarPort, DeepseekV3CacheCreation) {
  EXPECT_EQ(deepseek_v3_cache(61, 4, 32, 42, GetParam()).num_layers(), 61u);
}

TEST_P(BitpolarPort, Gemma3CacheInterleaving) {
  const ModelKvCache cache = gemma3_cache(12, 4, 16, 8, 4, 16, 42, GetParam());
  EXPECT_EQ(cache.num_layers(), 12u);
  EXPECT_EQ(cache.kind(0), LayerKind::Window);
  EXPECT_EQ(cache.kind(4), LayerKind::Window);
  EXPECT_EQ(cache.kind(5), LayerKind::Global);
  EXPECT_EQ(cache.kind(6), LayerKind::Window);
  EXPECT_EQ(cache.kind(11), LayerKind::Global);
  EXPECT_TRUE(std::holds_alternative<SlidingWindowKvCache>(cache.layer(0)));
  EXPECT_TRUE(std::holds_alternative<GqaKvCache>(cache.layer(5)));
}

// ---- MlaKvCache ----

TEST_P(MlaKvCacheTest, DecodedLatentsKeepCosineAbove0995At4Bits) {
  MlaKvCache cache = MlaKvCache::deepseek_v3(4, 32, 2026, GetParam());
  Gaussian gaussian(21);
  std::vector<std::vector<float>> latents;
  for (int t = 0; t < 64; ++t) {
    latents.push_back(gaussian.vector(512));
    cache.push_latent(latents.back());
  }
  const auto decoded = cache.decode_latents();
  ASSERT_EQ(decoded.size(), latents.size());
  double mean = 0.0, min = 1.0;
  for (std::size_t t = 0; t < latents.size(); ++t) {
    const double c = cosine(decoded[t], latents[t]);
    mean += c / static_cast<double>(latents.size());
    min = std::min(min, c);
  }
  RecordProperty("mean_latent_cosine", std::to_string(mean));
  EXPECT_GE(mean, 0.995);
  EXPECT_GE(min, 0.99);
}

TEST_P(MlaKvCacheTest, LatentsAreTheKeysOfACompressorWithTheSameConfig) {
  MlaKvCache mla(64, 3, 16, 7, GetParam());
  KvCacheCompressor keys(mla.config(), GetParam());
  Gaussian gaussian(22);
  for (int t = 0; t < 5; ++t) {
    const std::vector<float> latent = gaussian.vector(64);
    mla.push_latent(latent);
    keys.push(latent, gaussian.vector(64));
  }
  expect_same_bits(mla.decode_latents_tensor().to_host_f32(), keys.heads().decode_keys(0).to_host_f32());
  const Tensor codes = mla.latent_codes();
  EXPECT_EQ(codes.dtype(), DType::U8);
  EXPECT_EQ(codes.shape(), Shape({5, mla.record_bytes()}));
  EXPECT_EQ(codes.to_host_bytes(), keys.heads().records().first.to_host_bytes());
}

TEST_P(MlaKvCacheTest, EachLatentHoldsOneKeyRecordAndNoValue) {
  Backend& backend = backend_for(GetParam());
  const std::size_t before = backend.memory_stats().in_use;
  MlaKvCache cache = MlaKvCache::deepseek_v3(4, 32, 1, GetParam());
  EXPECT_EQ(backend.memory_stats().in_use - before, cache.table_bytes());
  EXPECT_EQ(cache.record_bytes(), 268u);  // 256 code bytes, norm, residual norm, 32 sign bits
  Gaussian gaussian(23);
  for (int t = 0; t < 3; ++t) cache.push_latent(gaussian.vector(512));
  EXPECT_EQ(cache.memory_usage(), 3u * 268);
  EXPECT_EQ(cache.memory_reserved(), 16u * 268);
  EXPECT_EQ(backend.memory_stats().in_use - before, cache.table_bytes() + cache.memory_reserved());
  EXPECT_NEAR(cache.compression_ratio(), 2048.0 / 268.0, 1e-12);  // bitpolar: 2048 / 1547
}

TEST_P(MlaKvCacheTest, GrowingPastTheRingKeepsEveryEarlierLatent) {
  MlaKvCache cache(16, 4, 8, 3, GetParam());
  Gaussian gaussian(24);
  for (int t = 0; t < 16; ++t) cache.push_latent(gaussian.vector(16));
  const auto before = cache.decode_latents();
  cache.push_latent(gaussian.vector(16));
  EXPECT_EQ(cache.memory_reserved(), 32u * cache.record_bytes());
  const auto after = cache.decode_latents();
  ASSERT_EQ(after.size(), 17u);
  EXPECT_EQ(std::vector<std::vector<float>>(after.begin(), after.begin() + 16), before);
}

TEST_P(MlaKvCacheTest, CompressionRatioIsOneWhenEmpty) {
  EXPECT_EQ(MlaKvCache(8, 4, 16, 42, GetParam()).compression_ratio(), 1.0);
}

TEST_P(MlaKvCacheTest, ClearDropsEveryLatentAndItsRecords) {
  MlaKvCache cache(8, 4, 16, 42, GetParam());
  cache.push_latent(std::vector<float>(8, 0.1f));
  cache.clear();
  EXPECT_TRUE(cache.is_empty());
  EXPECT_EQ(cache.memory_reserved(), 0u);
  EXPECT_TRUE(cache.decode_latents().empty());
  EXPECT_EQ(cache.latent_codes().shape(), Shape({0, cache.record_bytes()}));
}

TEST_P(MlaKvCacheTest, ZeroOrOddLatentDimIsAConfigError) {
  expect_error([&] { MlaKvCache(0, 4, 16, 42, GetParam()); }, ErrorCode::ZeroDimension, "dimension must be > 0");
  expect_error([&] { MlaKvCache(7, 4, 16, 42, GetParam()); }, ErrorCode::OddDimension, "dimension must be even, got 7");
  expect_error([&] { MlaKvCache(8, 4, 0, 42, GetParam()); }, ErrorCode::ZeroProjections, "projections must be > 0");
}

TEST_P(MlaKvCacheTest, WrongLengthLatentIsDimensionMismatchAndChangesNothing) {
  MlaKvCache cache(8, 4, 16, 42, GetParam());
  cache.push_latent(std::vector<float>(8, 0.1f));
  expect_error([&] { cache.push_latent(std::vector<float>(6, 0.1f)); }, ErrorCode::DimensionMismatch,
               "dimension mismatch: quantizer expects 8, got 6 (latent)");
  EXPECT_EQ(cache.len(), 1u);
}

TEST_P(MlaKvCacheTest, NonFiniteLatentIsNonFiniteInputAndChangesNothing) {
  MlaKvCache cache(8, 4, 16, 42, GetParam());
  cache.push_latent(std::vector<float>(8, 0.1f));
  const auto decoded = cache.decode_latents();
  std::vector<float> latent(8, 0.1f);
  latent[3] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { cache.push_latent(latent); }, ErrorCode::NonFiniteInput,
               "input contains non-finite values (NaN or Inf) at index 3 (latent)");
  latent[3] = 0.0f;
  latent[7] = -std::numeric_limits<float>::infinity();
  expect_error([&] { cache.push_latent(latent); }, ErrorCode::NonFiniteInput,
               "input contains non-finite values (NaN or Inf) at index 7 (latent)");
  EXPECT_EQ(cache.len(), 1u);
  EXPECT_EQ(cache.decode_latents(), decoded);
}

// ---- ModelKvCache ----

TEST_P(ModelKvCacheTest, KindNamesEachLayersAlternative) {
  const ModelKvCache model = one_layer_of_each_kind(GetParam());
  ASSERT_EQ(model.num_layers(), 4u);
  EXPECT_EQ(model.kind(0), LayerKind::Global);
  EXPECT_EQ(model.kind(1), LayerKind::Window);
  EXPECT_EQ(model.kind(2), LayerKind::Latent);
  EXPECT_EQ(model.kind(3), LayerKind::Linear);
}

TEST_P(ModelKvCacheTest, LayerIndexOutOfRangeIsHookNamingTheIndex) {
  ModelKvCache model = gemma3_cache(12, 1, 2, 8, 4, 16, 42, GetParam());
  const std::string message = "layer 12 out of range (num_layers=12)";
  expect_error([&] { (void)model.layer(12); }, ErrorCode::Hook, message);
  expect_error([&] { (void)model.layer_mut(12); }, ErrorCode::Hook, message);
  expect_error([&] { (void)model.kind(12); }, ErrorCode::Hook, message);
  expect_error([&] { (void)ModelKvCache({}).layer(0); }, ErrorCode::Hook, "layer 0 out of range (num_layers=0)");
}

TEST_P(ModelKvCacheTest, TotalCompressedBytesIsTheSumOfTheLayersOwnByteCounts) {
  ModelKvCache model = one_layer_of_each_kind(GetParam());
  EXPECT_EQ(model.total_compressed_bytes(), 10u * 4);
  fill(model);
  const auto& global = std::get<GqaKvCache>(model.layer(0));
  const auto& window = std::get<SlidingWindowKvCache>(model.layer(1));
  const auto& latent = std::get<MlaKvCache>(model.layer(2));
  EXPECT_EQ(model.total_compressed_bytes(), global.heads().memory_usage() + window.cache().heads().memory_usage() +
                                                latent.memory_usage() + 10 * sizeof(float));
  // Records at 8 dims, 4 bits, 16 projections: key 16 bytes, value 8; the window holds 3 of its 5 tokens.
  EXPECT_EQ(model.total_compressed_bytes(), 5u * 2 * 24 + 3u * 2 * 24 + 4u * 16 + 40);
}

TEST_P(ModelKvCacheTest, ClearEmptiesEveryLayer) {
  ModelKvCache model = one_layer_of_each_kind(GetParam());
  fill(model);
  model.clear();
  EXPECT_TRUE(std::get<GqaKvCache>(model.layer(0)).is_empty());
  EXPECT_TRUE(std::get<SlidingWindowKvCache>(model.layer(1)).is_empty());
  EXPECT_EQ(std::get<SlidingWindowKvCache>(model.layer(1)).total_tokens_seen(), 0u);
  EXPECT_TRUE(std::get<MlaKvCache>(model.layer(2)).is_empty());
  const auto& linear = std::get<LinearState>(model.layer(3));
  EXPECT_TRUE(linear.state.empty());
  EXPECT_EQ(linear.state_dim, 10u);
  EXPECT_EQ(model.total_compressed_bytes(), 0u);
}

TEST_P(ModelKvCacheTest, Llama3BuildersGiveGlobalLayersOf8KvHeadsAtHeadDim128) {
  const ModelKvCache small = llama3_8b_cache(4, 32, 42, GetParam());
  const ModelKvCache large = llama3_70b_cache(4, 32, 42, GetParam());
  ASSERT_EQ(large.num_layers(), 80u);
  for (const auto& [model, query_heads] : {std::pair{&small, 32u}, std::pair{&large, 64u}}) {
    for (std::size_t l = 0; l < model->num_layers(); ++l) {
      const auto& layer = std::get<GqaKvCache>(model->layer(l));
      EXPECT_EQ(layer.num_kv_heads(), 8u);
      EXPECT_EQ(layer.num_query_heads(), query_heads);
      EXPECT_EQ(layer.heads().config().head_dim, 128u);
      EXPECT_EQ(layer.heads().device(), GetParam());
    }
  }
}

TEST_P(ModelKvCacheTest, BuildersGiveLayerLTheSeedPlus100L) {
  const ModelKvCache llama = llama3_8b_cache(4, 32, 42, GetParam());
  EXPECT_EQ(std::get<GqaKvCache>(llama.layer(31)).heads().config().seed, 42u + 3100);
  const ModelKvCache gemma = gemma3_cache(6, 1, 2, 8, 4, 16, 7, GetParam());
  EXPECT_EQ(std::get<SlidingWindowKvCache>(gemma.layer(4)).cache().heads().config().seed, 7u + 400);
  EXPECT_EQ(std::get<SlidingWindowKvCache>(gemma.layer(4)).window_size(), 1024u);
  EXPECT_EQ(std::get<GqaKvCache>(gemma.layer(5)).heads().config().seed, 7u + 500);
  const ModelKvCache deepseek = deepseek_v3_cache(3, 4, 32, 9, GetParam());
  EXPECT_EQ(std::get<MlaKvCache>(deepseek.layer(2)).config().seed, 9u + 200);
  EXPECT_EQ(std::get<MlaKvCache>(deepseek.layer(2)).latent_dim(), 512u);
}

TEST_P(ModelKvCacheTest, BuilderConfigErrorsSurface) {
  expect_error([&] { (void)llama3_8b_cache(4, 0, 42, GetParam()); }, ErrorCode::ZeroProjections,
               "projections must be > 0");
  expect_error(
      [&] { (void)gemma3_cache(6, 3, 8, 8, 4, 16, 42, GetParam()); }, ErrorCode::DimensionMismatch,
      "dimension mismatch: quantizer expects 3, got 2 (num_query_heads 8 is not a multiple of num_kv_heads 3)");
}

INSTANTIATE_TEST_SUITE_P(Backends, BitpolarPort, ::testing::ValuesIn(test_devices()), device_param_name);
INSTANTIATE_TEST_SUITE_P(Backends, MlaKvCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);
INSTANTIATE_TEST_SUITE_P(Backends, ModelKvCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
