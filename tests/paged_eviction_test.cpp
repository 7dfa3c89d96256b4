// PagedKvCache's per-sequence eviction on every backend: trims, sinks and
// window, heavy hitters; which pages are kept as they are and which tokens
// move, the data and positions that remain, the pool's counters, shared and
// named pages, the step after an eviction, bad input and injected failures.
#include <numeric>

#include "fault_sweep.hpp"
#include "paged_support.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

class PagedEvictionTest : public PagedCacheFixture {
 protected:
  // A sequence of `tokens` tokens written into every layer (keys from seed `seed`).
  SequenceId written(PagedKvCache& cache, std::size_t tokens, std::uint32_t seed = 1) const {
    const SequenceId id = cache.add_sequence();
    write_all(cache, step(cache, {id}, {tokens}), data(tokens, seed));
    return id;
  }

  // Layer `layer`'s dense keys of `id`, token by token: [token][head * kDim + d].
  static std::vector<std::vector<float>> token_rows(const PagedKvCache& cache, SequenceId id, std::size_t layer = 1) {
    const std::size_t length = cache.length(id);
    const std::vector<float> keys = cache.gather(id, layer).keys.to_host_f32();  // [1, kHeads, length, kDim]
    std::vector<std::vector<float>> rows(length, std::vector<float>(kHeads * kDim));
    for (std::size_t h = 0; h < kHeads; ++h) {
      for (std::size_t t = 0; t < length; ++t) {
        for (std::size_t d = 0; d < kDim; ++d) rows[t][h * kDim + d] = keys[(h * length + t) * kDim + d];
      }
    }
    return rows;
  }

  // The rows of `all` at `indices`.
  static std::vector<std::vector<float>> select(const std::vector<std::vector<float>>& all,
                                                const std::vector<std::size_t>& indices) {
    std::vector<std::vector<float>> out;
    for (const std::size_t i : indices) out.push_back(all[i]);
    return out;
  }

  static std::vector<std::size_t> iota(std::size_t begin, std::size_t end) {
    std::vector<std::size_t> out(end - begin);
    std::iota(out.begin(), out.end(), begin);
    return out;
  }

  static std::vector<std::size_t> join(std::vector<std::size_t> a, const std::vector<std::size_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
};

TEST_P(PagedEvictionTest, TrimToAPageBoundaryKeepsTheLaterPagesAndMovesNoByte) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 12);
  const std::vector<std::int32_t> pages = cache.pages_of(a);
  const auto rows = token_rows(cache, a);
  const std::size_t in_use = backend_for(GetParam()).memory_stats().in_use;
  EXPECT_TRUE(cache.trim_to(a, 8));
  EXPECT_EQ(backend_for(GetParam()).memory_stats().in_use, in_use);  // no slot list: nothing moves
  EXPECT_EQ(cache.pages_of(a), (std::vector<std::int32_t>{pages[1], pages[2]}));
  EXPECT_EQ(cache.positions(a), iota(4, 12));
  EXPECT_EQ(token_rows(cache, a), select(rows, iota(4, 12)));
  EXPECT_EQ(cache.pool_stats().pages_used, 2u);
  EXPECT_EQ(cache.pool_stats().tokens, 8u);
}

TEST_P(PagedEvictionTest, TrimToInsideAPageMovesTheKeptTokensIntoFreshPages) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 12);
  const auto rows = token_rows(cache, a);
  EXPECT_TRUE(cache.trim_to(a, 6));
  EXPECT_EQ(cache.length(a), 6u);
  EXPECT_EQ(cache.pages_of(a).size(), 2u);
  EXPECT_EQ(cache.positions(a), iota(6, 12));
  EXPECT_EQ(token_rows(cache, a), select(rows, iota(6, 12)));
  EXPECT_EQ(token_rows(cache, a, 0).size(), 6u);
  const PagedPoolStats s = cache.pool_stats();
  EXPECT_EQ(s.pages_used, 2u);
  EXPECT_EQ(s.pages_free, 6u);
  EXPECT_EQ(s.tokens, 6u);
}

TEST_P(PagedEvictionTest, SinksAndWindowKeepTheSinkPageAsItIs) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 14);
  const std::int32_t sink_page = cache.pages_of(a)[0];
  const auto rows = token_rows(cache, a);
  EXPECT_TRUE(cache.evict_to_window(a, 4, 5));
  const std::vector<std::size_t> kept = join(iota(0, 4), iota(9, 14));
  EXPECT_EQ(cache.positions(a), kept);
  EXPECT_EQ(cache.pages_of(a)[0], sink_page);
  EXPECT_EQ(token_rows(cache, a), select(rows, kept));
  EXPECT_EQ(cache.pool_stats().pages_used, 3u);
  EXPECT_EQ(cache.pool_stats().tokens, 9u);
}

TEST_P(PagedEvictionTest, HeavyHittersKeepTheBestScoredOlderTokensAndTheWindow) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 10);
  const auto rows = token_rows(cache, a);
  std::vector<float> scores(10, 0.5f);
  scores[2] = 9.0f;
  scores[5] = 7.0f;
  scores[6] = 3.0f;
  EXPECT_TRUE(cache.evict_heavy_hitters(a, Tensor::from_host(scores, {10}, DType::F32, GetParam()), 2, 3));
  const std::vector<std::size_t> kept{2, 5, 7, 8, 9};
  EXPECT_EQ(cache.positions(a), kept);
  EXPECT_EQ(token_rows(cache, a), select(rows, kept));
  EXPECT_EQ(cache.pool_stats().tokens, 5u);
}

TEST_P(PagedEvictionTest, NothingToEvictReturnsFalseAndChangesNothing) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 6);
  const std::vector<float> before = state(cache, {a});
  EXPECT_FALSE(cache.trim_to(a, 6));
  EXPECT_FALSE(cache.evict_to_window(a, 2, 4));
  EXPECT_FALSE(
      cache.evict_heavy_hitters(a, Tensor::from_host(std::vector<float>(6, 1.0f), {6}, DType::F32, GetParam()), 3, 3));
  expect_same_bits(state(cache, {a}), before);
}

TEST_P(PagedEvictionTest, EvictingAForkKeepsTheOtherHoldersPagesAndData) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 10);
  const SequenceId b = cache.fork(a);
  const std::vector<std::int32_t> pages = cache.pages_of(a);
  const auto rows = token_rows(cache, a);
  EXPECT_TRUE(cache.trim_to(b, 5));
  EXPECT_EQ(cache.pages_of(a), pages);
  EXPECT_EQ(token_rows(cache, a), rows);
  EXPECT_EQ(token_rows(cache, b), select(rows, iota(5, 10)));
  // b's tokens 5..9 straddle a page boundary: both of its pages are fresh copies.
  const PagedPoolStats s = cache.pool_stats();
  EXPECT_EQ(s.pages_used, 5u);
  EXPECT_EQ(s.pages_shared, 0u);
  EXPECT_EQ(s.tokens, 15u);
}

TEST_P(PagedEvictionTest, AWholeSharedPageIsKeptSharedWhenItMovesByWholePages) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 12);
  const SequenceId b = cache.fork(a);
  EXPECT_TRUE(cache.trim_to(b, 8));
  const std::vector<std::int32_t> pages = cache.pages_of(a);
  EXPECT_EQ(cache.pages_of(b), (std::vector<std::int32_t>{pages[1], pages[2]}));
  EXPECT_EQ(cache.pool_stats().pages_shared, 2u);
  EXPECT_EQ(cache.pool_stats().tokens, 12u);
}

TEST_P(PagedEvictionTest, APrivateLastPageKeptInPartIsReusedAndTheNextTokenOverwritesItsStaleSlot) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 8);
  const std::vector<std::int32_t> pages = cache.pages_of(a);
  const auto rows = token_rows(cache, a);
  EXPECT_TRUE(cache.evict_to_window(a, 3, 0));
  EXPECT_EQ(cache.pages_of(a), (std::vector<std::int32_t>{pages[0]}));
  EXPECT_EQ(cache.pool_stats().tokens, 3u);
  const PagedStepPlan plan = step(cache, {a}, {1});
  EXPECT_EQ(plan.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{pages[0] * 4 + 3}));
  const std::vector<float> token = data(1, 9);
  write_all(cache, plan, token);
  std::vector<std::vector<float>> expected = select(rows, iota(0, 3));
  expected.emplace_back(token);
  for (float& v : expected.back()) v += 100.0f;  // layer 1
  EXPECT_EQ(token_rows(cache, a), expected);
  EXPECT_EQ(cache.positions(a), (std::vector<std::size_t>{0, 1, 2, 8}));
}

TEST_P(PagedEvictionTest, ANamedPageKeptInPartIsCopiedSoItsNameStaysTrue) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  std::vector<std::int32_t> ids(8);
  std::iota(ids.begin(), ids.end(), 100);
  const std::vector<std::size_t> counts{8};
  write_all(cache, cache.begin_step({&a, 1}, counts, ids), data(8, 3));
  const std::int32_t named = cache.pages_of(a)[0];
  EXPECT_TRUE(cache.evict_to_window(a, 3, 0));
  EXPECT_NE(cache.pages_of(a)[0], named);
  EXPECT_EQ(cache.prefix_stats().named_pages, 2u);
  EXPECT_EQ(cache.pool_stats().pages_cached, 2u);  // both named pages left a, and stay cached
  EXPECT_EQ(cache.add_sequence(ids).cached_tokens, 4u);
}

TEST_P(PagedEvictionTest, AfterAnEvictionTheStepAppendsAfterTheKeptTokensAndTheOldPlanIsStale) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  const PagedStepPlan old = step(cache, {a}, {14});
  write_all(cache, old, data(14, 4));
  EXPECT_TRUE(cache.evict_to_window(a, 4, 5));
  const std::vector<float> token = data(1, 5);
  expect_error([&] { write_all(cache, old, data(14, 4)); }, ErrorCode::Config,
               "write: the plan is of step 1, the cache is at step 2");
  const PagedStepPlan plan = step(cache, {a}, {1});
  const std::vector<std::int32_t> pages = cache.pages_of(a);
  EXPECT_EQ(plan.kv_indices.to_host_i32(), pages);
  EXPECT_EQ(plan.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{2}));
  EXPECT_EQ(plan.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{pages[2] * 4 + 1}));
  EXPECT_EQ(cache.positions(a).back(), 14u);
}

TEST_P(PagedEvictionTest, EvictionOfEverythingReturnsEveryPage) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 7);
  EXPECT_TRUE(cache.trim_to(a, 0));
  EXPECT_EQ(cache.length(a), 0u);
  EXPECT_TRUE(cache.pages_of(a).empty());
  EXPECT_EQ(cache.pool_stats().pages_free, 8u);
  EXPECT_EQ(cache.pool_stats().tokens, 0u);
}

TEST_P(PagedEvictionTest, ACompactionThatFindsNoFreshPageSaysOutOfMemoryAndChangesNothing) {
  PagedKvCache cache = make(4, 3);
  const SequenceId a = written(cache, 12);
  const std::vector<float> before = state(cache, {a});
  expect_error([&] { cache.trim_to(a, 6); }, ErrorCode::OutOfMemory,
               "trim_to: sequence 0 needs 2 fresh pages to compact into, 0 free and 0 cached of 3");
  expect_same_bits(state(cache, {a}), before);
}

TEST_P(PagedEvictionTest, BadInputIsRejectedNamingIt) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = written(cache, 12);
  expect_error([&] { cache.trim_to(SequenceId{9}, 1); }, ErrorCode::Hook,
               "trim_to: unknown sequence 9 (never added, or released)");
  expect_error([&] { cache.evict_to_window(SequenceId{9}, 1, 1); }, ErrorCode::Hook,
               "evict_to_window: unknown sequence 9 (never added, or released)");
  const Tensor wrong = Tensor::from_host(data(3, 1), {2, 12}, DType::F32, GetParam());
  expect_error([&] { cache.evict_heavy_hitters(a, wrong, 2, 2); }, ErrorCode::Shape,
               "evict_heavy_hitters: scores must be [12], got [2, 12]");
  expect_error([&] { cache.evict_heavy_hitters(a, Tensor{}, 2, 2); }, ErrorCode::Config,
               "evict_heavy_hitters: scores: undefined tensor");
  EXPECT_EQ(cache.length(a), 12u);
}

TEST_P(PagedEvictionTest, FailedAllocationsInAnEvictionChangeNothing) {
  const auto make_cache = [this] {
    PagedKvCache cache = make(4, 8);
    written(cache, 14);
    cache.fork(SequenceId{0});
    return cache;
  };
  const SequenceId a{0}, b{1};
  const auto observed = [&](const PagedKvCache& cache) {
    std::vector<float> out = state(cache, {a, b});
    out.push_back(static_cast<float>(cache.pool_stats().pages_free));
    return out;
  };
  EXPECT_EQ(sweep<PagedKvCache>(
                GetParam(), make_cache, [&](PagedKvCache& cache) { cache.evict_to_window(b, 2, 5); }, observed),
            1u);  // the slot list
  EXPECT_EQ(sweep<PagedKvCache>(
                GetParam(), make_cache, [&](PagedKvCache& cache) { cache.trim_to(a, 6); }, observed),
            0u);  // whole pages: nothing moves
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedEvictionTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
