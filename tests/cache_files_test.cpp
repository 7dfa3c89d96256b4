// save and load of every cache: round trips that keep every bit, positions and
// settings; files from Python; and an Io error for files that do not fit the cache.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "file_support.hpp"
#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

class CacheFilesTest : public ::testing::TestWithParam<Device> {
 protected:
  Tensor random_tensor(Shape shape, DType dtype, std::uint32_t seed) const {
    const std::vector<float> values = random_values(shape.numel(), seed, -2.0f, 2.0f);
    return Tensor::from_host(values, std::move(shape), dtype, GetParam());
  }
  ScratchDir dir_;
};

void expect_same_tensor(const Tensor& actual, const Tensor& expected) {
  ASSERT_TRUE(actual.defined());
  EXPECT_EQ(actual.shape(), expected.shape());
  EXPECT_EQ(actual.dtype(), expected.dtype());
  EXPECT_EQ(actual.to_host_bytes(), expected.to_host_bytes());
}

template <class Fn>
void expect_io_error(Fn&& fn, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected Io with '" << what << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST_P(CacheFilesTest, AttentionCacheRoundTripKeepsEveryBitAndTheDType) {
  AttentionCache cache = AttentionCache::with_capacity(3);
  for (std::uint32_t layer = 0; layer < 3; ++layer) {
    cache.push(Tensor::from_host(random_softmax_rows(2 * 4 * 9, 9, layer), {2, 4, 9, 9}, DType::BF16, GetParam()));
  }
  cache.save(dir_.path("attention.safetensors"));
  const AttentionCache loaded = AttentionCache::load(dir_.path("attention.safetensors"), GetParam());
  ASSERT_EQ(loaded.n_layers(), 3u);
  for (std::size_t layer = 0; layer < 3; ++layer) {
    expect_same_tensor(*loaded.get_layer(layer), *cache.get_layer(layer));
    EXPECT_EQ(loaded.get_layer(layer)->device(), GetParam());
  }
  expect_same_bits(loaded.attention_from_position(2, 8), cache.attention_from_position(2, 8));
}

TEST_P(CacheFilesTest, AttentionCacheFileNamesLayersAsTransformerLens) {
  AttentionCache cache = AttentionCache::with_capacity(2);
  for (std::uint32_t layer = 0; layer < 2; ++layer) {
    cache.push(Tensor::from_host(random_softmax_rows(3 * 5, 5, layer), {1, 3, 5, 5}, DType::F32, GetParam()));
  }
  cache.save(dir_.path("names.safetensors"));
  const SafetensorsReader file(dir_.path("names.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}));
  EXPECT_EQ(*file.metadata("micache.cache"), "AttentionCache");
}

TEST_P(CacheFilesTest, ActivationCachesRoundTrip) {
  FullActivationCache full = FullActivationCache::with_capacity(2);
  ActivationCache last = ActivationCache::with_capacity(2);
  for (std::uint32_t layer = 0; layer < 2; ++layer) {
    full.push(random_tensor({6, 16}, DType::F16, layer));
    last.push(random_tensor({16}, DType::F32, 10 + layer));
  }
  full.save(dir_.path("full.safetensors"));
  last.save(dir_.path("last.safetensors"));
  const FullActivationCache full_loaded = FullActivationCache::load(dir_.path("full.safetensors"), GetParam());
  const ActivationCache last_loaded = ActivationCache::load(dir_.path("last.safetensors"), GetParam());
  ASSERT_EQ(full_loaded.n_layers(), 2u);
  ASSERT_EQ(last_loaded.n_layers(), 2u);
  for (std::size_t layer = 0; layer < 2; ++layer) {
    expect_same_tensor(*full_loaded.get_layer(layer), *full.get_layer(layer));
    expect_same_tensor(*last_loaded.get_layer(layer), *last.get_layer(layer));
  }
}

TEST_P(CacheFilesTest, LoadingAnotherCachesFileIsAnIoError) {
  ActivationCache last = ActivationCache::with_capacity(1);
  last.push(random_tensor({16}, DType::F32, 1));
  last.save(dir_.path("last.safetensors"));
  expect_io_error([&] { FullActivationCache::load(dir_.path("last.safetensors"), GetParam()); },
                  "saved by ActivationCache, not by FullActivationCache");
  expect_io_error([&] { AttentionCache::load(dir_.path("last.safetensors"), GetParam()); },
                  "saved by ActivationCache, not by AttentionCache");
}

TEST_P(CacheFilesTest, FileWithoutLayersIsAnIoError) {
  SafetensorsWriter writer;
  writer.add("unrelated", random_tensor({2}, DType::F32, 1));
  writer.write(dir_.path("none.safetensors"));
  expect_io_error([&] { AttentionCache::load(dir_.path("none.safetensors"), GetParam()); },
                  "no tensor 'blocks.0.attn.hook_pattern'");
}

TEST_P(CacheFilesTest, IntegerPatternIsAnIoError) {
  SafetensorsWriter writer;
  writer.add("blocks.0.attn.hook_pattern", Tensor::from_host_i32(std::vector<std::int32_t>(16, 0), {1, 1, 4, 4}));
  writer.write(dir_.path("ints.safetensors"));
  expect_io_error([&] { AttentionCache::load(dir_.path("ints.safetensors"), GetParam()); },
                  "tensor 'blocks.0.attn.hook_pattern' must be f32, f16 or bf16, got i32");
}

// A cache that has wrapped, been evicted and has an empty layer.
KVCache evicted_kv_cache(Device device) {
  KVCache cache(3);
  for (std::uint32_t step = 0; step < 12; ++step) {
    for (std::uint32_t layer : {0u, 2u}) {
      const auto values = random_values(2 * 3 * 4, 100 * step + layer);
      cache.append(layer, Tensor::from_host(values, {2, 3, 1, 4}, DType::BF16, device),
                   Tensor::from_host(values, {2, 3, 1, 4}, DType::BF16, device));
    }
  }
  cache.evict_to_window(2, 5);  // positions 0, 1, 7..11
  return cache;
}

TEST_P(CacheFilesTest, KVCacheRoundTripKeepsKeysValuesPositionsAndEmptyLayers) {
  const KVCache cache = evicted_kv_cache(GetParam());
  cache.save(dir_.path("kv.safetensors"));
  const KVCache loaded = KVCache::load(dir_.path("kv.safetensors"), GetParam());
  ASSERT_EQ(loaded.n_layers(), 3u);
  EXPECT_EQ(loaded.seq_len(), 7u);
  EXPECT_EQ(loaded.capacity(), 7u);
  for (std::size_t layer : {0, 2}) {
    expect_same_tensor(loaded.keys(layer), cache.keys(layer));
    expect_same_tensor(loaded.values(layer), cache.values(layer));
    EXPECT_EQ(loaded.positions(layer), (std::vector<std::size_t>{0, 1, 7, 8, 9, 10, 11}));
  }
  EXPECT_FALSE(loaded.keys(1).defined());
  EXPECT_EQ(loaded.memory_usage(), cache.memory_usage());
}

TEST_P(CacheFilesTest, LoadedKVCacheContinuesTheOriginalPositions) {
  evicted_kv_cache(GetParam()).save(dir_.path("kv.safetensors"));
  KVCache loaded = KVCache::load(dir_.path("kv.safetensors"), GetParam());
  const Tensor token = random_tensor({2, 3, 1, 4}, DType::BF16, 7);
  loaded.append(0, token, token);
  EXPECT_EQ(loaded.positions(0).back(), 12u);
  EXPECT_EQ(loaded.first_position(0), 0u);
}

TEST_P(CacheFilesTest, KVCacheFromPythonWithoutPositionsCountsFromZero) {
  SafetensorsWriter writer;
  const Tensor keys = random_tensor({1, 2, 5, 8}, DType::F32, 1);
  const Tensor values = random_tensor({1, 2, 5, 8}, DType::F32, 2);
  writer.add("blocks.0.attn.k_cache", keys);
  writer.add("blocks.0.attn.v_cache", values);
  writer.write(dir_.path("python_kv.safetensors"));
  const KVCache loaded = KVCache::load(dir_.path("python_kv.safetensors"), GetParam());
  ASSERT_EQ(loaded.n_layers(), 1u);
  expect_same_tensor(loaded.keys(0), keys);
  expect_same_tensor(loaded.values(0), values);
  EXPECT_EQ(loaded.positions(0), (std::vector<std::size_t>{0, 1, 2, 3, 4}));
}

TEST_P(CacheFilesTest, KVCacheWithPositionsThatDoNotIncreaseIsAnIoError) {
  SafetensorsWriter writer;
  const Tensor keys = random_tensor({1, 1, 3, 2}, DType::F32, 1);
  writer.add("blocks.0.attn.k_cache", keys);
  writer.add("blocks.0.attn.v_cache", keys);
  writer.add_i64("blocks.0.attn.positions", std::vector<std::int64_t>{0, 4, 4}, Shape{3});
  writer.write(dir_.path("bad_positions.safetensors"));
  expect_io_error([&] { KVCache::load(dir_.path("bad_positions.safetensors"), GetParam()); },
                  "positions must increase");
}

TEST_P(CacheFilesTest, KVCacheWithKeysButNoValuesIsAnIoError) {
  SafetensorsWriter writer;
  writer.add("blocks.0.attn.k_cache", random_tensor({1, 1, 3, 2}, DType::F32, 1));
  writer.write(dir_.path("no_values.safetensors"));
  expect_io_error([&] { KVCache::load(dir_.path("no_values.safetensors"), GetParam()); },
                  "no tensor named 'blocks.0.attn.v_cache'");
}

KvCacheConfig compressed_config() { return {.head_dim = 32, .bits = 3, .projections = 8, .seed = 7, .value_bits = 4}; }

// A MultiHeadKvCache whose ring has wrapped: 20 tokens pushed, the last 9 kept.
MultiHeadKvCache wrapped_multi_head(Device device) {
  MultiHeadKvCache cache(3, compressed_config(), device);
  Gaussian gaussian(5);
  for (int t = 0; t < 20; ++t) {
    std::vector<std::vector<float>> keys, values;
    for (int h = 0; h < 3; ++h) {
      keys.push_back(gaussian.vector(32));
      values.push_back(gaussian.vector(32));
    }
    cache.push_token(keys, values);
    if (t == 15) cache.heads().keep_last(5);
  }
  return cache;
}

TEST_P(CacheFilesTest, MultiHeadKvCacheRoundTripKeepsRecordsScoresAndConfig) {
  const MultiHeadKvCache cache = wrapped_multi_head(GetParam());
  cache.save(dir_.path("mh.safetensors"));
  const MultiHeadKvCache loaded = MultiHeadKvCache::load(dir_.path("mh.safetensors"), GetParam());
  EXPECT_EQ(loaded.len(), 9u);
  EXPECT_EQ(loaded.num_heads(), 3u);
  EXPECT_EQ(loaded.heads().config().value_bits, 4u);
  EXPECT_EQ(loaded.heads().config().seed, 7u);
  const auto [keys, values] = cache.heads().records();
  const auto [loaded_keys, loaded_values] = loaded.heads().records();
  expect_same_tensor(loaded_keys, keys);
  expect_same_tensor(loaded_values, values);
  Gaussian gaussian(9);
  std::vector<std::vector<float>> queries;
  for (int h = 0; h < 3; ++h) queries.push_back(gaussian.vector(32));
  const auto expected = cache.attention_scores(queries);
  const auto actual = loaded.attention_scores(queries);
  for (std::size_t h = 0; h < 3; ++h) expect_same_bits(actual[h], expected[h]);
  EXPECT_EQ(loaded.compression_ratio(), cache.compression_ratio());
  EXPECT_EQ(loaded.heads().memory_reserved(), loaded.heads().memory_usage());
}

TEST_P(CacheFilesTest, CompressedCacheKeepsWorkingAfterLoad) {
  MultiHeadKvCache original = wrapped_multi_head(GetParam());
  original.save(dir_.path("mh.safetensors"));
  MultiHeadKvCache loaded = MultiHeadKvCache::load(dir_.path("mh.safetensors"), GetParam());
  const std::vector<std::vector<float>> token(3, std::vector<float>(32, 0.5f));
  original.push_token(token, token);
  loaded.push_token(token, token);
  EXPECT_EQ(loaded.heads().decode_keys().to_host_bytes(), original.heads().decode_keys().to_host_bytes());
}

TEST_P(CacheFilesTest, EveryCompressedCacheClassRoundTrips) {
  const KvCacheConfig config = compressed_config();
  Gaussian gaussian(11);
  KvCacheCompressor single(config, GetParam());
  GqaKvCache gqa(2, 6, config, GetParam());
  SlidingWindowKvCache window(2, 4, 3, config, GetParam());
  for (int t = 0; t < 5; ++t) {
    single.push(gaussian.vector(32), gaussian.vector(32));
    const std::vector<std::vector<float>> kv{gaussian.vector(32), gaussian.vector(32)};
    gqa.push_token(kv, kv);
    window.push_token(kv, kv);
  }
  single.save(dir_.path("single.safetensors"));
  gqa.save(dir_.path("gqa.safetensors"));
  window.save(dir_.path("window.safetensors"));
  const KvCacheCompressor single_loaded = KvCacheCompressor::load(dir_.path("single.safetensors"), GetParam());
  const GqaKvCache gqa_loaded = GqaKvCache::load(dir_.path("gqa.safetensors"), GetParam());
  const SlidingWindowKvCache window_loaded = SlidingWindowKvCache::load(dir_.path("window.safetensors"), GetParam());
  EXPECT_EQ(single_loaded.decode_keys(), single.decode_keys());
  EXPECT_EQ(gqa_loaded.num_query_heads(), 6u);
  EXPECT_EQ(gqa_loaded.heads().decode_values().to_host_bytes(), gqa.heads().decode_values().to_host_bytes());
  EXPECT_EQ(window_loaded.window_size(), 3u);
  EXPECT_EQ(window_loaded.window_len(), 3u);
  EXPECT_EQ(window_loaded.total_tokens_seen(), 5u);
  EXPECT_EQ(window_loaded.cache().num_query_heads(), 4u);
  expect_io_error([&] { MultiHeadKvCache::load(dir_.path("gqa.safetensors"), GetParam()); },
                  "saved by GqaKvCache, not by MultiHeadKvCache");
}

TEST_P(CacheFilesTest, RecordsThatDoNotMatchTheConfigAreAnIoError) {
  wrapped_multi_head(GetParam()).save(dir_.path("mh.safetensors"));
  // 5-bit keys: a wider key record than the file holds.
  copy_with_metadata(dir_.path("mh.safetensors"), dir_.path("tampered.safetensors"), "micache.config",
                     R"({"head_dim": 32, "bits": 5, "projections": 8, "seed": 7, "value_bits": 4, "estimator": "mse"})");
  expect_io_error([&] { MultiHeadKvCache::load(dir_.path("tampered.safetensors"), GetParam()); },
                  "'key_records' must be U8 [3, tokens, ");
}

TEST_P(CacheFilesTest, InvalidCompressedConfigIsAnIoErrorNamingTheRule) {
  wrapped_multi_head(GetParam()).save(dir_.path("mh.safetensors"));
  copy_with_metadata(dir_.path("mh.safetensors"), dir_.path("odd.safetensors"), "micache.config",
                     R"({"head_dim": 7, "bits": 3, "projections": 8, "seed": 7, "value_bits": 4, "estimator": "mse"})");
  expect_io_error([&] { MultiHeadKvCache::load(dir_.path("odd.safetensors"), GetParam()); },
                  "micache.config: dimension must be even, got 7");
}

INSTANTIATE_TEST_SUITE_P(Devices, CacheFilesTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
