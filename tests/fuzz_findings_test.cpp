// The library bugs libFuzzer found (fuzz/regressions holds the raw inputs),
// each kept here as the behaviour it now has, on every device.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <vector>

#include "file_support.hpp"
#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr std::size_t kHuge = std::numeric_limits<std::size_t>::max();

class FuzzFindings : public ::testing::TestWithParam<Device> {
 protected:
  Tensor tokens(std::size_t count, std::size_t head_dim = 4) const {
    return Tensor::from_host(random_values(2 * count * head_dim, static_cast<std::uint32_t>(count)),
                             {1, 2, count, head_dim}, DType::F32, GetParam());
  }
};

TEST_P(FuzzFindings, TensorWhoseByteCountOverflowsIsOutOfMemory) {
  EXPECT_THROW(
      try { Tensor::empty({std::size_t{1} << 62, 4}, DType::F32, GetParam()); } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::OutOfMemory);
        throw;
      },
      Error);
}

TEST_P(FuzzFindings, TensorWithAZeroDimensionHoldsNoBytesWhateverTheOthers) {
  const Tensor t = Tensor::empty({3, kHuge, 0}, DType::F32, GetParam());
  EXPECT_EQ(t.nbytes(), 0u);
}

TEST_P(FuzzFindings, ReserveWhoseByteCountOverflowsIsOutOfMemoryAndChangesNothing) {
  KVCache cache(1);
  cache.append(0, tokens(3), tokens(3));
  const std::size_t reserved = cache.memory_reserved();
  for (const std::size_t count : {(std::size_t{1} << 62) + 1, kHuge}) {
    try {
      cache.reserve(count);
      ADD_FAILURE() << "reserve(" << count << ") succeeded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::OutOfMemory) << e.what();
    }
  }
  EXPECT_EQ(cache.memory_reserved(), reserved);
  CompressedHeads heads(1, {.head_dim = 4, .bits = 4, .projections = 4}, GetParam());
  EXPECT_THROW(heads.reserve((std::size_t{1} << 62) + 1), Error);
  EXPECT_EQ(heads.memory_reserved(), 0u);
}

TEST_P(FuzzFindings, AppendingNoTokensToAnEmptyLayerAdoptsItsGeometry) {
  KVCache cache(1);
  cache.append(0, tokens(0), tokens(0));
  EXPECT_EQ(cache.seq_len(), 0u);
  EXPECT_EQ(cache.keys(0).shape(), (Shape{1, 2, 0, 4}));
  cache.append(0, tokens(2), tokens(2));
  EXPECT_EQ(cache.positions(0), (std::vector<std::size_t>{0, 1}));
}

TEST_P(FuzzFindings, AppendingAfterShrinkingToNoTokensWorks) {
  KVCache cache(1);
  cache.append(0, tokens(2), tokens(2));
  cache.trim_to(0);
  cache.shrink_to_fit();
  EXPECT_EQ(cache.capacity(), 0u);
  cache.append(0, tokens(0), tokens(0));
  cache.append(0, tokens(1), tokens(1));
  EXPECT_EQ(cache.positions(0), (std::vector<std::size_t>{2}));
}

TEST_P(FuzzFindings, SetLayerWithNoTokensOrZeroHeadDim) {
  KVCache no_tokens(1), no_head_dim(1);
  no_tokens.set_layer(0, tokens(0), tokens(0));
  no_head_dim.set_layer(0, tokens(3, 0), tokens(3, 0));
  EXPECT_EQ(no_tokens.memory_usage(), 0u);
  EXPECT_EQ(no_head_dim.memory_usage(), 0u);
  EXPECT_EQ(no_head_dim.positions(0).size(), 3u);
}

TEST_P(FuzzFindings, WindowsNearSizeMaxEvictNothing) {
  KVCache cache(1);
  cache.append(0, tokens(7), tokens(7));
  EXPECT_FALSE(cache.evict_to_window(3, kHuge - 2));
  const Tensor scores = Tensor::from_host(random_values(7, 1), {7}, DType::F32, GetParam());
  EXPECT_FALSE(cache.evict_heavy_hitters(scores, kHuge, 1));
  EXPECT_FALSE(cache.evict_heavy_hitters(scores, 3, kHuge - 2));
  EXPECT_EQ(cache.seq_len(), 7u);
}

TEST_P(FuzzFindings, KVCacheLayerOfNoTokensSavesAndLoads) {
  ScratchDir dir;
  KVCache cache(1);
  cache.set_layer(0, tokens(0), tokens(0));
  cache.save(dir.path("empty_layer.safetensors"));
  const KVCache loaded = KVCache::load(dir.path("empty_layer.safetensors"), GetParam());
  EXPECT_EQ(loaded.keys(0).shape(), (Shape{1, 2, 0, 4}));
}

TEST_P(FuzzFindings, CompressedFileAskingForHugeTablesIsRefusedBeforeAllocating) {
  ScratchDir dir;
  MultiHeadKvCache cache(2, {.head_dim = 4, .bits = 4, .projections = 4}, GetParam());
  cache.save(dir.path("small.safetensors"));
  copy_with_metadata(dir.path("small.safetensors"), dir.path("huge.safetensors"), "micache.config",
                     R"({"head_dim": 131070, "bits": 4, "projections": 65535, "seed": 0, "value_bits": 0, )"
                     R"("estimator": "mse"})");
  try {
    (void)MultiHeadKvCache::load(dir.path("huge.safetensors"), GetParam());
    FAIL() << "loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io);
    EXPECT_NE(std::string(e.what()).find("bytes of QJL tables"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, FuzzFindings, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
