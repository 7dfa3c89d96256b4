// KVCache: candle-mi's five tests, then everything they never checked: filled
// caches, exact kept values, memory accounting, ring wrap-around, growth,
// atomicity under bad input and injected allocation failure.
#include <algorithm>
#include <limits>
#include <numeric>

#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr std::size_t kBatch = 1;
constexpr std::size_t kHeads = 2;
constexpr std::size_t kDim = 4;

// Value of element (plane, absolute position t, d) of `layer`'s keys (values add 0.5).
float kv_value(std::size_t layer, std::size_t plane, std::size_t t, std::size_t d, bool is_value) {
  return static_cast<float>(layer * 100000 + plane * 10000 + t * 4 + d) + (is_value ? 0.5f : 0.0f);
}

class KVCacheTest : public ::testing::TestWithParam<Device> {
 protected:
  // Tokens [first, first + count) of `layer`, as [kBatch, kHeads, count, kDim].
  Tensor tokens(std::size_t layer, std::size_t first, std::size_t count, bool is_value,
                DType dtype = DType::F32) const {
    std::vector<float> data;
    for (std::size_t p = 0; p < kBatch * kHeads; ++p) {
      for (std::size_t t = first; t < first + count; ++t) {
        for (std::size_t d = 0; d < kDim; ++d) data.push_back(kv_value(layer, p, t, d, is_value));
      }
    }
    return Tensor::from_host(data, {kBatch, kHeads, count, kDim}, dtype, GetParam());
  }

  void append(KVCache& cache, std::size_t layer, std::size_t first, std::size_t count) const {
    cache.append(layer, tokens(layer, first, count, false), tokens(layer, first, count, true));
  }

  // A cache of `layers` layers holding positions [0, length).
  KVCache filled(std::size_t layers, std::size_t length) const {
    KVCache cache(layers);
    for (std::size_t l = 0; l < layers; ++l) append(cache, l, 0, length);
    return cache;
  }

  // Expects every layer to hold exactly positions [first, first + count), keys and values, in order.
  void expect_holds(const KVCache& cache, std::size_t first, std::size_t count) const {
    ASSERT_EQ(cache.seq_len(), count);
    for (std::size_t l = 0; l < cache.n_layers(); ++l) {
      EXPECT_EQ(cache.keys(l).shape(), (Shape{kBatch, kHeads, count, kDim}));
      EXPECT_EQ(cache.keys(l).to_host_f32(), tokens(l, first, count, false).to_host_f32()) << "keys of layer " << l;
      EXPECT_EQ(cache.values(l).to_host_f32(), tokens(l, first, count, true).to_host_f32()) << "values of layer " << l;
      EXPECT_EQ(cache.first_position(l), first);
    }
  }

  // Expects every layer to hold exactly the tokens at `kept` positions, in that order.
  void expect_positions(const KVCache& cache, const std::vector<std::size_t>& kept) const {
    ASSERT_EQ(cache.seq_len(), kept.size());
    for (std::size_t l = 0; l < cache.n_layers(); ++l) {
      for (bool is_value : {false, true}) {
        std::vector<float> expected;
        for (std::size_t p = 0; p < kBatch * kHeads; ++p) {
          for (std::size_t t : kept) {
            for (std::size_t d = 0; d < kDim; ++d) expected.push_back(kv_value(l, p, t, d, is_value));
          }
        }
        EXPECT_EQ((is_value ? cache.values(l) : cache.keys(l)).to_host_f32(), expected) << "layer " << l;
      }
      EXPECT_EQ(cache.positions(l), kept) << "layer " << l;
    }
  }

  static std::vector<std::size_t> range(std::size_t first, std::size_t end) {
    std::vector<std::size_t> out;
    for (std::size_t t = first; t < end; ++t) out.push_back(t);
    return out;
  }

  static constexpr std::size_t kTokenBytes = kBatch * kHeads * kDim * sizeof(float);  // per layer, keys only
};

// ---- candle-mi's tests ----

TEST_P(KVCacheTest, NewCache) {
  const KVCache cache = KVCache::new_cache(32);
  EXPECT_EQ(cache.n_layers(), 32u);
  EXPECT_TRUE(cache.is_empty());
  EXPECT_EQ(cache.seq_len(), 0u);
  EXPECT_EQ(cache.memory_usage(), 0u);
}

TEST_P(KVCacheTest, ClearCache) {
  KVCache cache(4);
  cache.clear();
  EXPECT_TRUE(cache.is_empty());
  EXPECT_EQ(cache.n_layers(), 4u);
}

TEST_P(KVCacheTest, LayerAccessValid) {
  const KVCache cache(4);
  EXPECT_FALSE(cache.keys(2).defined());
  EXPECT_FALSE(cache.values(2).defined());
}

TEST_P(KVCacheTest, LayerAccessOutOfRange) {
  KVCache cache(4);
  expect_error([&] { (void)cache.keys(10); }, ErrorCode::Hook, "layer 10 out of range for KV cache");
  expect_error([&] { cache.set_layer(10, tokens(0, 0, 1, false), tokens(0, 0, 1, true)); }, ErrorCode::Hook,
               "layer 10 out of range for KV cache");
}

TEST_P(KVCacheTest, DefaultCache) {
  const KVCache cache;
  EXPECT_EQ(cache.n_layers(), 0u);
  EXPECT_TRUE(cache.is_empty());
}

// ---- filled caches ----

TEST_P(KVCacheTest, SetLayerCopiesAndKeysReturnsTheStoredTokens) {
  KVCache cache(2);
  const Tensor k = tokens(1, 0, 6, false);
  cache.set_layer(1, k, tokens(1, 0, 6, true));
  EXPECT_FALSE(cache.is_empty());
  EXPECT_EQ(cache.seq_len(), 6u);
  EXPECT_FALSE(cache.keys(1).shares_storage_with(k));
  EXPECT_EQ(cache.keys(1).to_host_f32(), k.to_host_f32());
  EXPECT_FALSE(cache.keys(0).defined());
}

TEST_P(KVCacheTest, MemoryUsageCountsStoredElementsTimesDtypeSize) {
  KVCache cache = filled(3, 10);
  EXPECT_EQ(cache.memory_usage(), 3 * 2 * 10 * kTokenBytes);
  EXPECT_EQ(cache.memory_reserved(), 3 * 2 * 16 * kTokenBytes);  // minimum capacity 16
  cache.trim_to(4);
  EXPECT_EQ(cache.memory_usage(), 3 * 2 * 4 * kTokenBytes);
}

TEST_P(KVCacheTest, TrimToKeepsTheLastTokensOfEveryLayerInOrder) {
  KVCache cache = filled(3, 10);
  EXPECT_TRUE(cache.trim_to(7));
  expect_holds(cache, 3, 7);
  EXPECT_FALSE(cache.trim_to(7));
  EXPECT_FALSE(cache.trim_to(100));
}

TEST_P(KVCacheTest, TrimToZeroLeavesPopulatedEmptyLayers) {
  KVCache cache = filled(2, 5);
  EXPECT_TRUE(cache.trim_to(0));
  EXPECT_FALSE(cache.is_empty());
  EXPECT_EQ(cache.seq_len(), 0u);
  EXPECT_EQ(cache.memory_usage(), 0u);
}

TEST_P(KVCacheTest, EnforceMemoryLimitTrims2048To1536) {
  KVCache cache = filled(2, 2048);
  EXPECT_TRUE(cache.enforce_memory_limit(cache.memory_usage() - 1));
  expect_holds(cache, 512, 1536);
}

TEST_P(KVCacheTest, EnforceMemoryLimitTrims10To7) {
  KVCache cache = filled(2, 10);
  EXPECT_TRUE(cache.enforce_memory_limit(1));
  expect_holds(cache, 3, 7);
}

TEST_P(KVCacheTest, EnforceMemoryLimitOnOneTokenReturnsFalseAndKeepsIt) {
  KVCache cache = filled(2, 1);
  EXPECT_FALSE(cache.enforce_memory_limit(1));
  expect_holds(cache, 0, 1);
}

TEST_P(KVCacheTest, EnforceMemoryLimitUnderBudgetReturnsFalse) {
  KVCache cache = filled(2, 10);
  EXPECT_FALSE(cache.enforce_memory_limit(cache.memory_usage()));
  EXPECT_EQ(cache.seq_len(), 10u);
}

TEST_P(KVCacheTest, UntilUnderBudgetKeepsTheLongestSuffixThatFits) {
  KVCache cache = filled(2, 100);
  const std::size_t per_token = 2 * 2 * kTokenBytes;  // 2 layers, keys and values
  EXPECT_TRUE(cache.enforce_memory_limit(per_token * 37 + per_token / 2, EvictionPolicy::UntilUnderBudget));
  expect_holds(cache, 63, 37);
  EXPECT_LE(cache.memory_usage(), per_token * 37 + per_token / 2);
}

TEST_P(KVCacheTest, AppendAfterTrimContinuesTheSequence) {
  KVCache cache = filled(2, 10);
  cache.trim_to(4);
  for (std::size_t l = 0; l < 2; ++l) append(cache, l, 10, 3);
  // Positions 6..9 then 10..12 are consecutive, so the layer equals tokens [6, 13).
  expect_holds(cache, 6, 7);
}

TEST_P(KVCacheTest, TrimAfterWrapAroundKeepsOrder) {
  KVCache cache = filled(2, 16);  // capacity 16, full
  ASSERT_EQ(cache.capacity(), 16u);
  cache.trim_to(4);  // ring start at slot 12
  for (std::size_t l = 0; l < 2; ++l) append(cache, l, 16, 9);  // slots 0..8, wrapping
  EXPECT_EQ(cache.capacity(), 16u);                              // no growth: the ring reused freed slots
  expect_holds(cache, 12, 13);
  EXPECT_TRUE(cache.trim_to(5));
  expect_holds(cache, 20, 5);
}

TEST_P(KVCacheTest, DecodeAppendsGrowCapacityGeometrically) {
  KVCache cache(1);
  std::vector<std::size_t> capacities;
  for (std::size_t t = 0; t < 40; ++t) {
    append(cache, 0, t, 1);
    if (capacities.empty() || capacities.back() != cache.capacity()) capacities.push_back(cache.capacity());
  }
  EXPECT_EQ(capacities, (std::vector<std::size_t>{16, 32, 64}));
  expect_holds(cache, 0, 40);
}

TEST_P(KVCacheTest, PrefillThenDecode) {
  KVCache cache(2);
  for (std::size_t l = 0; l < 2; ++l) append(cache, l, 0, 50);
  for (std::size_t t = 50; t < 53; ++t) {
    for (std::size_t l = 0; l < 2; ++l) append(cache, l, t, 1);
  }
  expect_holds(cache, 0, 53);
}

TEST_P(KVCacheTest, ReserveAvoidsGrowth) {
  KVCache cache = filled(2, 3);
  cache.reserve(100);
  EXPECT_EQ(cache.capacity(), 100u);
  for (std::size_t t = 3; t < 100; ++t) {
    for (std::size_t l = 0; l < 2; ++l) append(cache, l, t, 1);
  }
  EXPECT_EQ(cache.capacity(), 100u);
  expect_holds(cache, 0, 100);
}

TEST_P(KVCacheTest, ShrinkToFitAfterTrimGivesMemoryBackToTheBackend) {
  Backend& backend = backend_for(GetParam());
  KVCache cache = filled(3, 1000);  // capacity 1000 after one prefill append
  cache.reserve(4096);
  const std::size_t before = backend.memory_stats().in_use;
  cache.trim_to(100);
  EXPECT_EQ(backend.memory_stats().in_use, before);  // trim alone only moves the ring start
  cache.shrink_to_fit();
  EXPECT_EQ(cache.capacity(), 100u);
  EXPECT_EQ(cache.memory_reserved(), cache.memory_usage());
  EXPECT_EQ(before - backend.memory_stats().in_use, 3 * 2 * (4096 - 100) * kTokenBytes);
  expect_holds(cache, 900, 100);
  const Tensor first = cache.keys(0);
  EXPECT_TRUE(first.shares_storage_with(cache.keys(0)));  // dense now: keys() returns the buffer, no gather
}

TEST_P(KVCacheTest, ShrinkToFitHasTheBackendReturnItsUnusedMemoryToTheSystem) {
  Backend& backend = backend_for(GetParam());
  KVCache cache = filled(2, 50);
  const std::size_t trims = backend.memory_stats().trims;
  cache.shrink_to_fit();
  EXPECT_EQ(backend.memory_stats().trims, trims + 1);  // Backend::release_unused_memory, once
  EXPECT_GE(backend.memory_stats().reserved, backend.memory_stats().in_use);
  cache.shrink_to_fit();  // nothing to reallocate: still hands back what the backend holds unused
  EXPECT_EQ(backend.memory_stats().trims, trims + 2);
  KVCache empty(3);
  empty.shrink_to_fit();  // no populated layer: no device to ask
  EXPECT_EQ(backend.memory_stats().trims, trims + 2);
  expect_holds(cache, 0, 50);
}

TEST_P(KVCacheTest, HalfPrecisionTokensRoundTrip) {
  for (DType dtype : {DType::F16, DType::BF16}) {
    KVCache cache(1);
    const Tensor k = Tensor::from_host(random_values(kHeads * 5 * kDim, 3, -2.0f, 2.0f), {1, kHeads, 5, kDim}, dtype,
                                       GetParam());
    cache.append(0, k, k);
    cache.trim_to(3);
    const std::vector<float> all = k.to_host_f32();
    std::vector<float> expected;
    for (std::size_t p = 0; p < kHeads; ++p) {
      expected.insert(expected.end(), all.begin() + static_cast<std::ptrdiff_t>((p * 5 + 2) * kDim),
                      all.begin() + static_cast<std::ptrdiff_t>((p * 5 + 5) * kDim));
    }
    EXPECT_EQ(cache.values(0).to_host_f32(), expected) << dtype_name(dtype);
    EXPECT_EQ(cache.memory_usage(), 2 * kHeads * 3 * kDim * 2);
  }
}

// ---- attention sinks + sliding window ----

TEST_P(KVCacheTest, EvictToWindowKeepsSinksAndTheLastTokens) {
  KVCache cache = filled(2, 20);
  const std::size_t capacity = cache.capacity();
  EXPECT_TRUE(cache.evict_to_window(4, 6));
  std::vector<std::size_t> kept = range(0, 4);
  for (std::size_t t : range(14, 20)) kept.push_back(t);
  expect_positions(cache, kept);
  EXPECT_EQ(cache.capacity(), capacity);
  EXPECT_EQ(cache.first_position(0), 0u);
}

TEST_P(KVCacheTest, AppendAfterEvictionContinuesOriginalPositions) {
  KVCache cache = filled(2, 20);
  cache.evict_to_window(2, 3);
  for (std::size_t l = 0; l < 2; ++l) append(cache, l, 20, 2);
  expect_positions(cache, {0, 1, 17, 18, 19, 20, 21});
}

TEST_P(KVCacheTest, TrimAfterEvictionDropsSinksFirst) {
  KVCache cache = filled(2, 20);
  cache.evict_to_window(2, 5);
  EXPECT_TRUE(cache.trim_to(4));
  expect_positions(cache, range(16, 20));
  EXPECT_EQ(cache.first_position(1), 16u);
}

TEST_P(KVCacheTest, EvictToWindowWithNothingToDropReturnsFalse) {
  KVCache cache = filled(2, 10);
  EXPECT_FALSE(cache.evict_to_window(4, 6));
  EXPECT_FALSE(cache.evict_to_window(0, 10));
  expect_positions(cache, range(0, 10));
}

TEST_P(KVCacheTest, EvictToWindowAfterWrapAround) {
  KVCache cache = filled(2, 16);
  cache.trim_to(6);                                              // start at slot 10
  for (std::size_t l = 0; l < 2; ++l) append(cache, l, 16, 8);  // wraps into slots 0..7
  EXPECT_TRUE(cache.evict_to_window(3, 4));
  expect_positions(cache, {10, 11, 12, 20, 21, 22, 23});
}

TEST_P(KVCacheTest, AllocationFailureDuringEvictionLeavesCacheUnchanged) {
  Backend& backend = backend_for(GetParam());
  KVCache cache = filled(2, 20);
  const std::size_t in_use = backend.memory_stats().in_use;
  backend.fail_allocation_after(3);  // layer 1's keys buffer
  EXPECT_THROW(cache.evict_to_window(2, 2), Error);
  backend.fail_allocation_after(0);
  EXPECT_EQ(backend.memory_stats().in_use, in_use);
  expect_positions(cache, range(0, 20));
}

// ---- heavy hitters (H2O) ----

// Reference selection: the `heavy` best of scores[0, length - window) (ties:
// older first, NaN last), ascending, then the window.
std::vector<std::size_t> reference_heavy_hitters(const std::vector<float>& scores, std::size_t heavy,
                                                 std::size_t window) {
  std::vector<std::size_t> order(scores.size() - window);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (std::isnan(scores[a])) return false;
    if (std::isnan(scores[b])) return true;
    return scores[a] > scores[b];
  });
  order.resize(heavy);
  std::sort(order.begin(), order.end());
  for (std::size_t t = scores.size() - window; t < scores.size(); ++t) order.push_back(t);
  return order;
}

TEST_P(KVCacheTest, HeavyHittersKeepTheBestScoredOlderTokensAndTheWindow) {
  KVCache cache = filled(2, 12);
  std::vector<float> scores(12, 0.1f);
  scores[2] = 5.0f;
  scores[7] = 3.0f;
  scores[5] = 4.0f;
  scores[10] = 9.0f;  // inside the window: kept anyway, not counted as a heavy hitter
  EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(scores, {12}, DType::F32, GetParam()), 3, 3));
  expect_positions(cache, {2, 5, 7, 9, 10, 11});
}

TEST_P(KVCacheTest, HeavyHitterTiesKeepTheOlderTokenAndNaNRanksLast) {
  KVCache cache = filled(1, 8);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> scores{nan, 1.0f, 2.0f, 1.0f, nan, 1.0f, 0.0f, 0.0f};
  cache.evict_heavy_hitters(Tensor::from_host(scores, {8}, DType::F32, GetParam()), 3, 1);
  expect_positions(cache, {1, 2, 3, 7});
}

TEST_P(KVCacheTest, PerLayerScoresRankEachLayerSeparately) {
  KVCache cache = filled(2, 6);
  const std::vector<float> scores{9, 0, 0, 0, 0, 0,   // layer 0 keeps position 0
                                  0, 0, 0, 9, 0, 0};  // layer 1 keeps position 3
  EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(scores, {2, 6}, DType::F32, GetParam()), 1, 2));
  EXPECT_EQ(cache.positions(0), (std::vector<std::size_t>{0, 4, 5}));
  EXPECT_EQ(cache.positions(1), (std::vector<std::size_t>{3, 4, 5}));
  for (std::size_t l = 0; l < 2; ++l) {
    const std::size_t heavy = l == 0 ? 0 : 3;
    std::vector<float> expected;
    for (std::size_t p = 0; p < kBatch * kHeads; ++p) {
      for (std::size_t t : {heavy, std::size_t{4}, std::size_t{5}}) {
        for (std::size_t d = 0; d < kDim; ++d) expected.push_back(kv_value(l, p, t, d, false));
      }
    }
    EXPECT_EQ(cache.keys(l).to_host_f32(), expected) << "layer " << l;
  }
}

TEST_P(KVCacheTest, HeavyHittersMatchTheReferenceForWarpAndSortSelections) {
  for (const std::size_t heavy : {5u, 40u}) {  // k <= 32 selects per warp; k > 32 sorts
    for (const DType dtype : {DType::F32, DType::BF16}) {
      KVCache cache = filled(2, 100);
      const std::vector<float> scores = rounded_to(random_values(100, 77 + static_cast<std::uint32_t>(heavy)), dtype);
      EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(scores, {100}, dtype, GetParam()), heavy, 10));
      expect_positions(cache, reference_heavy_hitters(scores, heavy, 10));
    }
  }
}

TEST_P(KVCacheTest, HeavyHittersAfterWrapAroundAndEarlierEvictionMapToOriginalPositions) {
  KVCache cache = filled(1, 16);
  cache.trim_to(6);                   // positions 10..15 at slots 10..15
  append(cache, 0, 16, 8);            // 16..23 wrap into slots 0..7
  cache.evict_to_window(2, 10);       // 10, 11, 14..23
  const std::vector<float> scores{0, 7, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(scores, {12}, DType::F32, GetParam()), 2, 3));
  expect_positions(cache, {11, 16, 21, 22, 23});
  append(cache, 0, 24, 1);
  expect_positions(cache, {11, 16, 21, 22, 23, 24});
}

TEST_P(KVCacheTest, HeavyHittersFedFromAttentionReceived) {
  // Two heads, 8 causal queries; every query attends mostly to key 1 and key 4.
  std::vector<float> pattern(2 * 8 * 8, 0.0f);
  for (std::size_t h = 0; h < 2; ++h) {
    for (std::size_t q = 0; q < 8; ++q) {
      float* row = &pattern[(h * 8 + q) * 8];
      for (std::size_t k = 0; k <= q; ++k) row[k] = 0.01f;
      if (q >= 1) row[1] = 0.5f;
      if (q >= 4) row[4] = h == 0 ? 0.4f : 0.3f;
    }
  }
  AttentionCache attention;
  attention.push(Tensor::from_host(pattern, {1, 2, 8, 8}, DType::F32, GetParam()));
  KVCache cache = filled(2, 8);
  EXPECT_TRUE(cache.evict_heavy_hitters(attention.attention_received(0), 2, 2));
  expect_positions(cache, {1, 4, 6, 7});
}

TEST_P(KVCacheTest, HeavyHittersWithNothingToEvictReturnFalse) {
  KVCache cache = filled(2, 6);
  EXPECT_FALSE(cache.evict_heavy_hitters(Tensor::from_host(random_values(6, 1), {6}, DType::F32, GetParam()), 3, 3));
  expect_holds(cache, 0, 6);
}

TEST_P(KVCacheTest, HeavyHitterScoresOfTheWrongShapeOrDtypeChangeNothing) {
  KVCache cache = filled(2, 6);
  expect_error([&] { cache.evict_heavy_hitters(Tensor::from_host(random_values(5, 1), {5}, DType::F32, GetParam()), 1, 1); },
               ErrorCode::Shape, "evict_heavy_hitters: scores must be [6] or [2, 6], got [5]");
  expect_error([&] { cache.evict_heavy_hitters(Tensor::from_host(random_values(18, 1), {3, 6}, DType::F32, GetParam()), 1, 1); },
               ErrorCode::Shape, "evict_heavy_hitters: scores must be [6] or [2, 6], got [3, 6]");
  const std::vector<std::int32_t> ints(6, 1);
  expect_error([&] { cache.evict_heavy_hitters(Tensor::from_host_i32(ints, {6}, GetParam()), 1, 1); },
               ErrorCode::Config, "evict_heavy_hitters: scores must be f32, f16 or bf16, got i32");
  expect_holds(cache, 0, 6);
}

TEST_P(KVCacheTest, AllocationFailureDuringHeavyHitterEvictionLeavesCacheUnchanged) {
  Backend& backend = backend_for(GetParam());
  const Tensor scores = Tensor::from_host(random_values(20, 3), {20}, DType::F32, GetParam());
  for (std::size_t fail_at = 1; fail_at <= 8; ++fail_at) {  // top-k outputs, then per layer: index list, K, V
    KVCache cache = filled(2, 20);
    const std::size_t in_use = backend.memory_stats().in_use;
    backend.fail_allocation_after(fail_at);
    try {
      cache.evict_heavy_hitters(scores, 4, 4);
      ADD_FAILURE() << "eviction should have failed at allocation " << fail_at;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::OutOfMemory);
    }
    backend.fail_allocation_after(0);
    EXPECT_EQ(backend.memory_stats().in_use, in_use);
    expect_positions(cache, range(0, 20));
  }
}

// ---- atomicity ----

TEST_P(KVCacheTest, MismatchedAppendLeavesCacheUnchanged) {
  KVCache cache = filled(2, 5);
  const Tensor wide = Tensor::empty({kBatch, kHeads, 1, kDim + 1}, DType::F32, GetParam());
  expect_error([&] { cache.append(0, wide, wide); }, ErrorCode::Shape,
               "append: new keys [1, 2, 1, 5] do not extend layer 0 [1, 2, 5, 4]");
  expect_error([&] { cache.append(1, tokens(1, 5, 1, false), tokens(1, 5, 2, true)); }, ErrorCode::Shape,
               "append: keys [1, 2, 1, 4] and values [1, 2, 2, 4] differ in shape");
  expect_error([&] { cache.append(0, tokens(0, 5, 1, false, DType::BF16), tokens(0, 5, 1, true, DType::BF16)); },
               ErrorCode::Config,
               "append: bf16 on " + GetParam().to_string() + " into layer 0 of f32 on " + GetParam().to_string());
  expect_holds(cache, 0, 5);
}

TEST_P(KVCacheTest, OutOfRangeLayerLeavesCacheUnchanged) {
  KVCache cache = filled(2, 5);
  expect_error([&] { append(cache, 2, 5, 1); }, ErrorCode::Hook, "layer 2 out of range for KV cache");
  expect_error([&] { cache.set_layer(7, tokens(0, 0, 1, false), tokens(0, 0, 1, true)); }, ErrorCode::Hook,
               "layer 7 out of range for KV cache");
  expect_error([&] { (void)cache.positions(2); }, ErrorCode::Hook, "layer 2 out of range for KV cache");
  expect_holds(cache, 0, 5);
}

TEST_P(KVCacheTest, SetLayerWithOtherGeometryLeavesCacheUnchanged) {
  KVCache cache = filled(2, 5);
  const Tensor other = Tensor::empty({kBatch, kHeads + 1, 5, kDim}, DType::F32, GetParam());
  expect_error([&] { cache.set_layer(1, other, other); }, ErrorCode::Shape,
               "layer 1: [batch, kv_heads, head_dim] = [1, 3, 4] differs from layer 0's [1, 2, 4]");
  const Tensor rank3 = Tensor::empty({kHeads, 5, kDim}, DType::F32, GetParam());
  expect_error([&] { cache.set_layer(1, rank3, rank3); }, ErrorCode::Shape,
               "set_layer: keys must be [batch, kv_heads, seq_len, head_dim], got rank 3 [2, 5, 4]");
  expect_holds(cache, 0, 5);
}

TEST_P(KVCacheTest, TrimWithUnequalLayerLengthsIsRejectedAndChangesNothing) {
  KVCache cache = filled(2, 5);
  append(cache, 0, 5, 1);  // a decode step half done: layer 0 has 6 tokens, layer 1 has 5
  expect_error([&] { cache.trim_to(2); }, ErrorCode::Shape,
               "trim_to: layer 1 holds 5 tokens, the first populated layer 6; finish the step first");
  EXPECT_EQ(cache.keys(0).dim(2), 6u);
  EXPECT_EQ(cache.keys(1).dim(2), 5u);
}

TEST_P(KVCacheTest, AllocationFailureDuringGrowthLeavesCacheUnchanged) {
  Backend& backend = backend_for(GetParam());
  for (std::size_t fail_at : {1u, 2u}) {  // the keys buffer, then the values buffer
    KVCache cache = filled(2, 16);          // full: the next append must grow
    const std::size_t in_use = backend.memory_stats().in_use;
    backend.fail_allocation_after(fail_at);
    try {
      append(cache, 0, 16, 1);
      ADD_FAILURE() << "append should have failed at allocation " << fail_at;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::OutOfMemory);
    }
    backend.fail_allocation_after(0);
    EXPECT_EQ(backend.memory_stats().in_use, in_use);
    EXPECT_EQ(cache.capacity(), 16u);
    expect_holds(cache, 0, 16);
  }
}

TEST_P(KVCacheTest, AllocationFailureDuringReserveLeavesCacheUnchanged) {
  Backend& backend = backend_for(GetParam());
  KVCache cache = filled(3, 8);
  const std::size_t in_use = backend.memory_stats().in_use;
  backend.fail_allocation_after(4);  // layer 1's values buffer
  EXPECT_THROW(cache.reserve(64), Error);
  backend.fail_allocation_after(0);
  EXPECT_EQ(backend.memory_stats().in_use, in_use);
  EXPECT_EQ(cache.capacity(), 16u);
  expect_holds(cache, 0, 8);
}

// ---- the one compaction: a kept suffix moves no byte, anything else is copied ----

TEST_P(KVCacheTest, EvictToWindowWithoutSinksMovesNoByte) {
  Backend& backend = backend_for(GetParam());
  KVCache cache = filled(2, 20);
  const std::size_t in_use = backend.memory_stats().in_use;
  EXPECT_TRUE(cache.evict_to_window(0, 6));
  EXPECT_EQ(backend.memory_stats().in_use, in_use);  // the ring's start moved; no new buffer
  expect_positions(cache, range(14, 20));
}

TEST_P(KVCacheTest, EvictToWindowWithWindowZeroKeepsOnlyTheSinks) {
  KVCache cache = filled(2, 20);
  EXPECT_TRUE(cache.evict_to_window(3, 0));
  expect_positions(cache, range(0, 3));
  for (std::size_t l = 0; l < 2; ++l) append(cache, l, 20, 1);
  expect_positions(cache, {0, 1, 2, 20});
}

TEST_P(KVCacheTest, HeavyHittersWithHeavyZeroKeepTheWindowAndMoveNoByte) {
  Backend& backend = backend_for(GetParam());
  KVCache cache = filled(2, 12);
  const std::size_t in_use = backend.memory_stats().in_use;
  EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(random_values(12, 5), {12}, DType::F32, GetParam()), 0, 4));
  EXPECT_EQ(backend.memory_stats().in_use, in_use);
  expect_positions(cache, range(8, 12));
}

TEST_P(KVCacheTest, HeavyHittersWithWindowZeroKeepOnlyTheBestScored) {
  KVCache cache = filled(1, 8);
  const std::vector<float> scores{0, 6, 0, 0, 0, 0, 7, 0};
  EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(scores, {8}, DType::F32, GetParam()), 2, 0));
  expect_positions(cache, {1, 6});
}

TEST_P(KVCacheTest, HeavyHittersAcrossManyRangesAfterWrapAround) {
  KVCache cache = filled(1, 16);
  cache.trim_to(6);         // positions 10..15 at slots 10..15
  append(cache, 0, 16, 8);  // 16..23 wrap into slots 0..7
  const std::vector<float> scores{9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 0, 0, 0, 0};
  EXPECT_TRUE(cache.evict_heavy_hitters(Tensor::from_host(scores, {14}, DType::F32, GetParam()), 5, 2));
  expect_positions(cache, {10, 12, 14, 16, 18, 22, 23});
}

// ---- argument checks in the shared wording (src/core/checks.hpp) ----

TEST_P(KVCacheTest, UndefinedHeavyHitterScoresAreRejected) {
  KVCache cache = filled(2, 6);
  expect_error([&] { cache.evict_heavy_hitters(Tensor(), 1, 1); }, ErrorCode::Config,
               "evict_heavy_hitters: scores: undefined tensor");
  expect_holds(cache, 0, 6);
}

TEST_P(KVCacheTest, UndefinedKeysAreRejected) {
  KVCache cache(1);
  expect_error([&] { cache.append(0, Tensor(), tokens(0, 0, 1, true)); }, ErrorCode::Config,
               "append: keys: undefined tensor");
}

TEST_P(KVCacheTest, KeysAndValuesOfTwoDtypesAreRejected) {
  KVCache cache(1);
  expect_error([&] { cache.append(0, tokens(0, 0, 1, false), tokens(0, 0, 1, true, DType::BF16)); },
               ErrorCode::Config, "append: keys (f32) and values (bf16) differ in dtype");
}

TEST_P(KVCacheTest, IntegerKeysAreRejected) {
  KVCache cache(1);
  const Tensor ints =
      Tensor::from_host_i32(std::vector<std::int32_t>(kHeads * kDim, 1), {1, kHeads, 1, kDim}, GetParam());
  expect_error([&] { cache.set_layer(0, ints, ints); }, ErrorCode::Config,
               "set_layer: keys must be f32, f16 or bf16, got i32");
}

// ---- the restore hook ----

TEST_P(KVCacheTest, RestorePositionsGivesTheLayerItsPositions) {
  KVCache cache = filled(2, 4);
  cache.restore_positions(1, {2, 3, 7, 9}, 12);
  EXPECT_EQ(cache.positions(1), (std::vector<std::size_t>{2, 3, 7, 9}));
  EXPECT_EQ(cache.first_position(1), 2u);
  EXPECT_EQ(cache.next_position(1), 12u);
  append(cache, 1, 4, 1);
  EXPECT_EQ(cache.positions(1), (std::vector<std::size_t>{2, 3, 7, 9, 12}));
}

TEST_P(KVCacheTest, RestorePositionsOutOfOrderIsRejectedAndChangesNothing) {
  KVCache cache = filled(1, 3);
  expect_error([&] { cache.restore_positions(0, {0, 2, 2}, 5); }, ErrorCode::Shape,
               "layer 0: positions must increase and stay below the next position 5; entry 2 is 2");
  expect_error([&] { cache.restore_positions(0, {0, 1}, 5); }, ErrorCode::Shape, "layer 0: 2 positions for 3 tokens");
  expect_positions(cache, range(0, 3));
  EXPECT_EQ(cache.next_position(0), 3u);
}

INSTANTIATE_TEST_SUITE_P(Backends, KVCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
