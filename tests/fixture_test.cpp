// The bundled real-model data (tests/data, all-MiniLM-L6-v2 on three
// sentences, written by scripts/make_fixtures.py): its patterns are softmax
// rows, and micache's head means and top-k on it equal the script's numpy
// reference bit for bit, on every device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "file_support.hpp"
#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr std::size_t kLayers = 6;
constexpr std::size_t kHeads = 12;

struct Sentence {
  const char* name;
  std::size_t tokens;
};
constexpr Sentence kSentences[] = {{"s0", 14}, {"s1", 17}, {"s2", 60}};

std::string fixture(const Sentence& s) { return test_data(std::string("minilm_") + s.name + ".safetensors"); }

const SafetensorsReader& reference() {
  static const SafetensorsReader file(test_data("minilm_reference.safetensors"));
  return file;
}

std::vector<float> reference_f32(const Sentence& s, std::size_t layer, const char* what) {
  return reference().read(std::string(s.name) + ".blocks." + std::to_string(layer) + "." + what).to_host_f32();
}

class FixtureTest : public ::testing::TestWithParam<Device> {};

TEST(Fixture, EveryPatternRowIsASoftmaxRow) {
  for (const Sentence& s : kSentences) {
    const AttentionCache cache = AttentionCache::load(fixture(s));
    ASSERT_EQ(cache.n_layers(), kLayers);
    for (std::size_t layer = 0; layer < kLayers; ++layer) {
      const Tensor& pattern = *cache.get_layer(layer);
      ASSERT_EQ(pattern.shape(), (Shape{1, kHeads, s.tokens, s.tokens}));
      const std::vector<float> p = pattern.to_host_f32();
      for (std::size_t row = 0; row < kHeads * s.tokens; ++row) {
        double sum = 0.0;
        for (std::size_t k = 0; k < s.tokens; ++k) {
          const float w = p[row * s.tokens + k];
          ASSERT_TRUE(w >= 0.0f && w <= 1.0f) << s.name << " layer " << layer << " row " << row;
          sum += w;
        }
        EXPECT_NEAR(sum, 1.0, 1e-5) << s.name << " layer " << layer << " row " << row;
      }
    }
  }
}

TEST(Fixture, TokensMatchThePatternLength) {
  for (const Sentence& s : kSentences) {
    const SafetensorsReader file(fixture(s));
    ASSERT_NE(file.metadata("tokens"), nullptr);
    std::size_t commas = 0;
    for (char c : *file.metadata("tokens")) commas += c == '"' ? 1 : 0;
    EXPECT_EQ(commas / 2, s.tokens) << s.name;  // every token is one quoted string (none holds a quote)
  }
}

TEST_P(FixtureTest, HeadMeanOfTheLastRowEqualsTheNumpyReference) {
  for (const Sentence& s : kSentences) {
    const AttentionCache cache = AttentionCache::load(fixture(s), GetParam());
    for (std::size_t layer = 0; layer < kLayers; ++layer) {
      SCOPED_TRACE(std::string(s.name) + " layer " + std::to_string(layer));
      expect_same_bits(cache.attention_from_position(layer, s.tokens - 1), reference_f32(s, layer, "from_last"));
    }
  }
}

TEST_P(FixtureTest, HeadMeanOfTheFirstColumnEqualsTheNumpyReference) {
  for (const Sentence& s : kSentences) {
    const AttentionCache cache = AttentionCache::load(fixture(s), GetParam());
    for (std::size_t layer = 0; layer < kLayers; ++layer) {
      SCOPED_TRACE(std::string(s.name) + " layer " + std::to_string(layer));
      expect_same_bits(cache.attention_to_position(layer, 0), reference_f32(s, layer, "to_first"));
    }
  }
}

TEST_P(FixtureTest, TopFiveOfTheLastRowEqualsTheNumpyReference) {
  for (const Sentence& s : kSentences) {
    const AttentionCache cache = AttentionCache::load(fixture(s), GetParam());
    for (std::size_t layer = 0; layer < kLayers; ++layer) {
      SCOPED_TRACE(std::string(s.name) + " layer " + std::to_string(layer));
      const std::string prefix = std::string(s.name) + ".blocks." + std::to_string(layer) + ".top5_last.";
      const std::vector<std::int32_t> indices = reference().read(prefix + "indices").to_host_i32();
      const std::vector<float> weights = reference().read(prefix + "weights").to_host_f32();
      const auto top = cache.top_attended_positions(layer, s.tokens - 1, 5);
      ASSERT_EQ(top.size(), 5u);
      for (std::size_t i = 0; i < 5; ++i) {
        EXPECT_EQ(top[i].first, static_cast<std::size_t>(indices[i])) << "rank " << i;
        EXPECT_EQ(float_bits(top[i].second), float_bits(weights[i])) << "rank " << i;
      }
    }
  }
}

TEST_P(FixtureTest, KeysAndValuesLoadIntoAKVCacheAtPositionsFromZero) {
  const Sentence& s = kSentences[2];
  const KVCache cache = KVCache::load(fixture(s), GetParam());
  ASSERT_EQ(cache.n_layers(), kLayers);
  EXPECT_EQ(cache.seq_len(), s.tokens);
  EXPECT_EQ(cache.memory_usage(), kLayers * 2 * kHeads * s.tokens * 32 * sizeof(float));
  EXPECT_EQ(cache.positions(5).back(), s.tokens - 1);
  const SafetensorsReader file(fixture(s));
  EXPECT_EQ(cache.keys(3).to_host_bytes(), file.read("blocks.3.attn.k_cache").to_host_bytes());
}

TEST_P(FixtureTest, HiddenStatesLoadIntoAFullActivationCache) {
  const FullActivationCache cache = FullActivationCache::load(fixture(kSentences[1]), GetParam());
  ASSERT_EQ(cache.n_layers(), kLayers);
  EXPECT_EQ(cache.seq_len(), 17u);
  EXPECT_EQ(cache.get_layer(0)->shape(), (Shape{17, 384}));
}

INSTANTIATE_TEST_SUITE_P(Devices, FixtureTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
