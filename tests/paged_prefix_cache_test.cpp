// PagedKvCache's prefix cache: the page pool's states and names (host), then
// on every backend: pages named by the hash chain as steps fill them, prompts
// sharing the longest named prefix, released pages cached and evicted oldest
// first, salts, broken chains, the 2,048-token figure, and injected
// allocation failures.
#include <numeric>

#include "fault_sweep.hpp"
#include "paged_support.hpp"
#include "src/caches/page_pool.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

using detail::PageHash;
using detail::PagePool;

// ---- the pool (host only) ----

TEST(PagePool, HandsOutFreePagesBeforeCachedOnesAndCachedOnesOldestFirst) {
  PagePool pool(4);
  const std::int32_t a = pool.allocate(), b = pool.allocate();
  ASSERT_TRUE(pool.name(a, PageHash{1, 1}));
  ASSERT_TRUE(pool.name(b, PageHash{2, 2}));
  pool.release(b);  // cached first: the oldest
  pool.release(a);
  EXPECT_EQ(pool.cached(), 2u);
  EXPECT_EQ(pool.free(), 2u);
  std::vector<std::int32_t> next;
  pool.next_pages(4, next);
  EXPECT_EQ(next, (std::vector<std::int32_t>{2, 3, b, a}));
  for (const std::int32_t expected : next) EXPECT_EQ(pool.allocate(), expected);
  EXPECT_EQ(pool.evictions(), 2u);
  EXPECT_EQ(pool.find(PageHash{1, 1}), -1);
  EXPECT_EQ(pool.find(PageHash{2, 2}), -1);
  EXPECT_EQ(pool.names(), 0u);
}

TEST(PagePool, ForgettingANameKeepsEveryCollidingNameFindable) {
  PagePool pool(8);  // 32 slots: hashes with equal low words share a home slot
  std::vector<std::int32_t> pages;
  for (std::uint64_t i = 0; i < 6; ++i) {
    pages.push_back(pool.allocate());
    ASSERT_TRUE(pool.name(pages.back(), PageHash{.low = 5 + 32 * (i % 2), .high = i}));
  }
  for (const std::size_t gone : {2u, 0u, 5u}) {  // evict three, from the middle and both ends of the run
    pool.release(pages[gone]);
  }
  pool.allocate();  // the two free pages first
  pool.allocate();
  for (int i = 0; i < 3; ++i) pool.allocate();  // then the three cached ones, forgetting their names
  for (std::uint64_t i = 0; i < 6; ++i) {
    const bool forgotten = i == 2 || i == 0 || i == 5;
    EXPECT_EQ(pool.find(PageHash{.low = 5 + 32 * (i % 2), .high = i}), forgotten ? -1 : pages[i]) << i;
  }
  EXPECT_EQ(pool.names(), 3u);
}

TEST(PagePool, ASecondPageWithTheSameNameStaysUnnamed) {
  PagePool pool(2);
  const std::int32_t a = pool.allocate(), b = pool.allocate();
  EXPECT_TRUE(pool.name(a, PageHash{7, 7}));
  EXPECT_FALSE(pool.name(b, PageHash{7, 7}));
  EXPECT_FALSE(pool.named(b));
  EXPECT_EQ(pool.find(PageHash{7, 7}), a);
  pool.release(b);
  EXPECT_EQ(pool.free(), 1u);  // an unnamed page is free, not cached
}

TEST(PagePool, RetainingACachedPageMakesItUsedAgain) {
  PagePool pool(2);
  const std::int32_t a = pool.allocate();
  pool.name(a, PageHash{3, 3});
  pool.release(a);
  EXPECT_EQ(pool.cached(), 1u);
  pool.retain(a);
  EXPECT_EQ(pool.cached(), 0u);
  EXPECT_EQ(pool.used(), 1u);
  EXPECT_EQ(pool.references(a), 1u);
  EXPECT_EQ(pool.find(PageHash{3, 3}), a);
}

TEST(PageHash, SplittingAPagesTokensDoesNotChangeItsHash) {
  const std::vector<std::int32_t> tokens{5, 6, 7, 8};
  const PageHash parent{.low = 1, .high = 2};
  const PageHash whole = detail::hash_page(parent, 3, tokens);
  EXPECT_EQ(detail::hash_page(parent, 3, std::span(tokens).first(1), std::span(tokens).subspan(1)), whole);
  EXPECT_EQ(detail::hash_page(parent, 3, {}, tokens), whole);
  EXPECT_NE(detail::hash_page(parent, 4, tokens), whole);
  EXPECT_NE(detail::hash_page(PageHash{}, 3, tokens), whole);
}

// ---- the cache, once per backend ----

class PagedPrefixCacheTest : public PagedCacheFixture {
 protected:
  // Token ids first, first + 1, ...
  static std::vector<std::int32_t> prompt(std::size_t tokens, std::int32_t first = 100) {
    std::vector<std::int32_t> ids(tokens);
    std::iota(ids.begin(), ids.end(), first);
    return ids;
  }

  // A sequence that computed `ids` in one step (written into every layer) and so named its full pages.
  SequenceId computed(PagedKvCache& cache, const std::vector<std::int32_t>& ids, std::uint64_t salt = 0,
                      std::uint32_t seed = 1) const {
    const PrefixHit hit = cache.add_sequence(ids, salt);
    const std::size_t rest = ids.size() - hit.cached_tokens;
    const std::vector<std::size_t> counts{rest};
    const PagedStepPlan plan = cache.begin_step({&hit.id, 1}, counts, std::span(ids).subspan(hit.cached_tokens));
    write_all(cache, plan, data(rest, seed));
    return hit.id;
  }
};

TEST_P(PagedPrefixCacheTest, APromptWithNothingCachedFindsNothing) {
  PagedKvCache cache = make(4, 8);
  const PrefixHit hit = cache.add_sequence(prompt(10));
  EXPECT_EQ(hit.cached_tokens, 0u);
  EXPECT_EQ(cache.length(hit.id), 0u);
  EXPECT_EQ(cache.prefix_stats().lookup_tokens, 10u);
  EXPECT_EQ(cache.prefix_stats().hit_tokens, 0u);
}

TEST_P(PagedPrefixCacheTest, AStepWithTokenIdsNamesEveryPageItFills) {
  PagedKvCache cache = make(4, 8);
  computed(cache, prompt(10));
  EXPECT_EQ(cache.prefix_stats().named_pages, 2u);  // the third page holds 2 of 4
}

TEST_P(PagedPrefixCacheTest, PagesFilledOverManyStepsAreNamedAsIfInOne) {
  PagedKvCache one = make(4, 8), many = make(4, 8);
  computed(one, prompt(9));
  const SequenceId a = many.add_sequence();
  const std::vector<std::int32_t> ids = prompt(9);
  for (const auto& [begin, count] : {std::pair<std::size_t, std::size_t>{0, 3}, {3, 2}, {5, 4}}) {
    const std::vector<std::size_t> counts{count};
    many.begin_step({&a, 1}, counts, std::span(ids).subspan(begin, count));
  }
  EXPECT_EQ(many.prefix_stats().named_pages, 2u);
  EXPECT_EQ(many.add_sequence(prompt(12)).cached_tokens, 8u);
  EXPECT_EQ(one.add_sequence(prompt(12)).cached_tokens, 8u);
}

TEST_P(PagedPrefixCacheTest, ASecondPromptSharesTheFullPagesOfTheFirst) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = computed(cache, prompt(10));
  const PrefixHit hit = cache.add_sequence(prompt(14));
  EXPECT_EQ(hit.cached_tokens, 8u);
  EXPECT_EQ(cache.length(hit.id), 8u);
  const std::vector<std::int32_t> pages_a = cache.pages_of(a);
  EXPECT_EQ(cache.pages_of(hit.id), (std::vector<std::int32_t>{pages_a[0], pages_a[1]}));
  EXPECT_EQ(cache.positions(hit.id), (std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(cache.pool_stats().pages_shared, 2u);
  EXPECT_EQ(cache.pool_stats().tokens, 10u);
  EXPECT_EQ(cache.prefix_stats().hit_tokens, 8u);
  EXPECT_EQ(cache.prefix_stats().hit_pages, 2u);
  const std::vector<float> keys_a = cache.gather(a, 1).keys.to_host_f32();  // [1, 2, 10, 4]
  const std::vector<float> keys_b = cache.gather(hit.id, 1).keys.to_host_f32();
  for (std::size_t h = 0; h < kHeads; ++h) {
    for (std::size_t i = 0; i < 8 * kDim; ++i) EXPECT_EQ(keys_b[h * 8 * kDim + i], keys_a[h * 10 * kDim + i]);
  }
}

TEST_P(PagedPrefixCacheTest, AtLeastOnePromptTokenIsLeftToCompute) {
  PagedKvCache cache = make(4, 8);
  computed(cache, prompt(8));
  EXPECT_EQ(cache.add_sequence(prompt(8)).cached_tokens, 4u);
  EXPECT_EQ(cache.add_sequence(prompt(9)).cached_tokens, 8u);
  EXPECT_EQ(cache.add_sequence(prompt(1)).cached_tokens, 0u);
  EXPECT_EQ(cache.add_sequence({}).cached_tokens, 0u);
}

TEST_P(PagedPrefixCacheTest, ADifferentTokenEndsTheMatchAtItsPage) {
  PagedKvCache cache = make(4, 8);
  computed(cache, prompt(13));
  std::vector<std::int32_t> ids = prompt(13);
  ids[5] = 7;
  EXPECT_EQ(cache.add_sequence(ids).cached_tokens, 4u);
  ids[0] = 7;
  EXPECT_EQ(cache.add_sequence(ids).cached_tokens, 0u);
  std::vector<std::int32_t> later = prompt(13);
  later[1] = 7;  // page 0 differs, pages 1 and 2 hold the same tokens: the chain still differs
  EXPECT_EQ(cache.add_sequence(later).cached_tokens, 0u);
}

TEST_P(PagedPrefixCacheTest, PromptsOfDifferentSaltsShareNothing) {
  PagedKvCache cache = make(4, 8);
  computed(cache, prompt(10), /*salt=*/3);
  EXPECT_EQ(cache.add_sequence(prompt(10), 4).cached_tokens, 0u);
  EXPECT_EQ(cache.add_sequence(prompt(10)).cached_tokens, 0u);
  EXPECT_EQ(cache.add_sequence(prompt(10), 3).cached_tokens, 8u);
}

TEST_P(PagedPrefixCacheTest, ReleasedNamedPagesStayCachedAndComeBack) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = computed(cache, prompt(10));
  const std::vector<std::int32_t> pages_a = cache.pages_of(a);
  const std::vector<float> keys = cache.gather(a, 0).keys.to_host_f32();
  cache.release(a);
  PagedPoolStats s = cache.pool_stats();
  EXPECT_EQ(s.pages_cached, 2u);
  EXPECT_EQ(s.pages_free, 6u);
  EXPECT_EQ(s.pages_used, 0u);
  EXPECT_EQ(s.tokens, 0u);
  EXPECT_EQ(s.bytes_cached, 2 * cache.config().page_bytes());

  const PrefixHit hit = cache.add_sequence(prompt(10));
  EXPECT_EQ(hit.cached_tokens, 8u);
  EXPECT_EQ(cache.pages_of(hit.id), (std::vector<std::int32_t>{pages_a[0], pages_a[1]}));
  s = cache.pool_stats();
  EXPECT_EQ(s.pages_cached, 0u);
  EXPECT_EQ(s.pages_used, 2u);
  EXPECT_EQ(s.tokens, 8u);
  const std::vector<float> again = cache.gather(hit.id, 0).keys.to_host_f32();
  for (std::size_t h = 0; h < kHeads; ++h) {
    for (std::size_t i = 0; i < 8 * kDim; ++i) EXPECT_EQ(again[h * 8 * kDim + i], keys[h * 10 * kDim + i]);
  }
}

TEST_P(PagedPrefixCacheTest, AStepEvictsCachedPagesOnlyWhenNoPageIsFreeAndTheLaterPagesFirst) {
  PagedKvCache cache = make(4, 4);
  const SequenceId a = computed(cache, prompt(8));  // pages 0 and 1, both named
  cache.release(a);
  const SequenceId b = cache.add_sequence();
  const PagedStepPlan plan = step(cache, {b}, {12});  // the 2 free pages, then cached page 1 (the later one)
  EXPECT_EQ(plan.kv_indices.to_host_i32(), (std::vector<std::int32_t>{2, 3, 1}));
  EXPECT_EQ(cache.prefix_stats().evictions, 1u);
  EXPECT_EQ(cache.pool_stats().pages_cached, 1u);
  EXPECT_EQ(cache.add_sequence(prompt(9)).cached_tokens, 4u);  // page 0 is still cached
}

TEST_P(PagedPrefixCacheTest, CachedPagesCountTowardsWhatAStepCanTake) {
  PagedKvCache cache = make(4, 3);
  cache.release(computed(cache, prompt(8)));  // 1 free, 2 cached
  const SequenceId b = cache.add_sequence(), c = cache.add_sequence();
  EXPECT_NO_THROW(step(cache, {b, c}, {8, 4}));
  expect_error([&] { step(cache, {c}, {1}); }, ErrorCode::OutOfMemory,
               "begin_step: needs 1 pages (0 copied on write), 0 free and 0 cached of 3");
}

TEST_P(PagedPrefixCacheTest, AStepWithoutTokenIdsEndsNamingForItsSequences) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  step(cache, {a}, {2});
  const std::vector<std::int32_t> ids = prompt(6);
  const std::vector<std::size_t> counts{6};
  cache.begin_step({&a, 1}, counts, ids);
  EXPECT_EQ(cache.prefix_stats().named_pages, 0u);
}

TEST_P(PagedPrefixCacheTest, TokenIdsMustMatchTheNewTokens) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  const std::vector<SequenceId> ids{a, b};
  const std::vector<std::size_t> counts{2, 3};
  const std::vector<std::int32_t> tokens = prompt(4);
  expect_error([&] { cache.begin_step(ids, counts, tokens); }, ErrorCode::Shape,
               "begin_step: 4 token ids for 5 new tokens");
  EXPECT_EQ(cache.length(a), 0u);
  EXPECT_EQ(cache.pool_stats().pages_used, 0u);
}

TEST_P(PagedPrefixCacheTest, ForkedSequencesNameTheirOwnPages) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = computed(cache, prompt(6));
  const SequenceId b = cache.fork(a);
  const std::vector<SequenceId> ids{a, b};
  const std::vector<std::size_t> counts{2, 2};
  const std::vector<std::int32_t> tokens{106, 107, 206, 207};
  cache.begin_step(ids, counts, tokens);
  EXPECT_EQ(cache.prefix_stats().named_pages, 3u);  // page 0, and each one's second page
  std::vector<std::int32_t> fork_prompt = prompt(6);
  fork_prompt.insert(fork_prompt.end(), {206, 207, 1});
  const PrefixHit hit = cache.add_sequence(fork_prompt);
  EXPECT_EQ(hit.cached_tokens, 8u);
  EXPECT_EQ(cache.pages_of(hit.id), cache.pages_of(b));
}

// The figure: a 2,048-token prompt whose first 1,984 tokens are
// cached takes 4 new pages for the other 64 and copies none of the 124 it shares.
TEST_P(PagedPrefixCacheTest, A2048TokenPromptWith1984CachedTakesFourNewPages) {
  PagedKvCache cache(
      PagedKvConfig{
          .n_layers = 2, .kv_heads = 1, .head_dim = 4, .page_size = 16, .num_pages = 256, .dtype = DType::F32},
      GetParam());
  const std::vector<std::int32_t> ids = prompt(2048);
  const PrefixHit first = cache.add_sequence(std::span(ids).first(1984));
  const std::vector<std::size_t> counts{1984};
  cache.begin_step({&first.id, 1}, counts, std::span(ids).first(1984));
  const std::size_t used = cache.pool_stats().pages_used;  // 124
  const std::size_t in_use = backend_for(GetParam()).memory_stats().in_use;

  const PrefixHit hit = cache.add_sequence(ids);
  EXPECT_EQ(hit.cached_tokens, 1984u);
  EXPECT_EQ(backend_for(GetParam()).memory_stats().in_use, in_use);  // no device memory, no copy
  const std::vector<std::size_t> rest{64};
  const PagedStepPlan plan = cache.begin_step({&hit.id, 1}, rest, std::span(ids).subspan(1984));
  EXPECT_EQ(cache.pool_stats().pages_used, used + 4);
  EXPECT_EQ(cache.pool_stats().pages_shared, 124u);
  EXPECT_EQ(plan.total_new, 64u);
}

TEST_P(PagedPrefixCacheTest, FailedAllocationsInANamingStepChangeNothing) {
  const auto make_cache = [this] {
    PagedKvCache cache = make(4, 4);
    cache.release(computed(cache, prompt(8)));  // two cached pages
    cache.add_sequence();
    return cache;
  };
  const SequenceId b{1};
  const auto observed = [&](const PagedKvCache& cache) {
    std::vector<float> out = state(cache, {b});
    const PagedPoolStats s = cache.pool_stats();
    const PrefixCacheStats p = cache.prefix_stats();
    for (const std::size_t v : {s.pages_cached, s.pages_free, p.named_pages, static_cast<std::size_t>(p.evictions)})
      out.push_back(static_cast<float>(v));
    return out;
  };
  const std::vector<std::int32_t> ids = prompt(12, 500);
  EXPECT_EQ(sweep<PagedKvCache>(
                GetParam(), make_cache,
                [&](PagedKvCache& cache) {
                  const std::vector<std::size_t> counts{12};
                  cache.begin_step({&b, 1}, counts, ids);
                },
                observed),
            1u);  // the plan's buffer
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedPrefixCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
