// PagedKvCache with layer kinds (hybrid models) on every backend: layers of
// one kind grouped over one pool, window layers giving back the pages that
// slide out of their window as steps advance, the decode attention of a
// window layer reading only its window, aligned per-group metadata, forks,
// evictions, the device accounting, files and the memory of a Gemma-3-like
// model.
#include <numeric>

#include "fault_sweep.hpp"
#include "file_support.hpp"
#include "paged_support.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

PagedKvConfig kinds_config(std::vector<PagedLayerKind> kinds, std::size_t page_size, std::size_t num_pages) {
  PagedKvConfig c = small_config(page_size, num_pages);
  c.n_layers = kinds.size();
  c.layer_kinds = std::move(kinds);
  return c;
}

TEST(PagedLayerGroups, LayersOfOneKindFormGroupsOfTheSmallestKindsCount) {
  const PagedLayerKind w = PagedLayerKind::sliding(8), f = PagedLayerKind::full();
  const PagedLayerGroups gemma = kinds_config({w, w, w, w, w, f}, 4, 8).layer_groups();
  EXPECT_EQ(gemma.group_size, 1u);
  EXPECT_EQ(gemma.groups(), 6u);
  EXPECT_EQ(gemma.layer_group, (std::vector<std::size_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(gemma.group_kinds.back(), f);

  const PagedLayerGroups mixed = kinds_config({w, f, w, f, w, w, f}, 4, 8).layer_groups();
  EXPECT_EQ(mixed.group_size, 3u);  // 4 window layers, 3 full
  EXPECT_EQ(mixed.layer_group, (std::vector<std::size_t>{0, 2, 0, 2, 0, 1, 2}));
  EXPECT_EQ(mixed.layer_slot, (std::vector<std::size_t>{0, 0, 1, 1, 2, 0, 2}));
  EXPECT_EQ(mixed.group_kinds, (std::vector<PagedLayerKind>{w, w, f}));
  EXPECT_TRUE(mixed.has_windows());

  const PagedLayerGroups plain = small_config(4, 8).layer_groups();
  EXPECT_EQ(plain.group_size, 2u);
  EXPECT_EQ(plain.groups(), 1u);
  EXPECT_FALSE(plain.has_windows());
}

TEST(PagedKvConfig, APageHoldsOneGroupsLayersAndTheNullPageIsReserved) {
  const PagedKvConfig c = kinds_config({PagedLayerKind::sliding(8), PagedLayerKind::full()}, 4, 8);
  EXPECT_EQ(c.bytes_per_token(), 2u * 2 * kHeads * kDim * 4);
  EXPECT_EQ(c.slot_bytes(), 2u * 1 * kHeads * kDim * 4);
  EXPECT_EQ(c.page_bytes(), 4 * c.slot_bytes());
  EXPECT_EQ(c.pool_pages(), 7u);
  EXPECT_EQ(c.table_bytes(), 2u * 1024 * (7 + 1) * 4);  // two groups' tables; rows of the 7 * 4 slots
  EXPECT_EQ(small_config(4, 8).pool_pages(), 8u);
}

TEST(PagedKvConfig, LayerKindErrorsAreConfigErrors) {
  PagedKvConfig c = kinds_config({PagedLayerKind::full()}, 4, 8);
  c.n_layers = 2;
  expect_error([&] { c.validate(); }, ErrorCode::Config, "PagedKvConfig.layer_kinds has 1 entries for 2 layers");
  c = kinds_config({PagedLayerKind::full(), PagedLayerKind{.window = 0, .sinks = 4}}, 4, 8);
  expect_error([&] { c.validate(); }, ErrorCode::Config, "PagedKvConfig.layer_kinds[1] has 4 sinks and no window");
  c = kinds_config({PagedLayerKind::sliding(4), PagedLayerKind::full()}, 4, 1);
  expect_error([&] { c.validate(); }, ErrorCode::Config,
               "PagedKvConfig: a cache with window layers needs 2 pages or more (one is the null page), got 1");
}

TEST(PagedKvConfig, KindOfALayerIsItsKindAndFullWithoutKinds) {
  const PagedKvConfig c = kinds_config({PagedLayerKind::sinks_and_window(4, 8), PagedLayerKind::full()}, 4, 8);
  EXPECT_EQ(c.kind_of(0), PagedLayerKind::sinks_and_window(4, 8));
  EXPECT_EQ(c.kind_of(1), PagedLayerKind::full());
  EXPECT_EQ(small_config(4, 8).kind_of(1), PagedLayerKind::full());
}

TEST(PagedKvConfig, KindOfALayerOutOfRangeIsAHookError) {
  const PagedKvConfig c = kinds_config({PagedLayerKind::sliding(8), PagedLayerKind::full()}, 4, 8);
  expect_error([&] { (void)c.kind_of(2); }, ErrorCode::Hook, "layer 2 out of range (layers=2)");
  expect_error([&] { (void)small_config(4, 8).kind_of(2); }, ErrorCode::Hook, "layer 2 out of range (layers=2)");
}

TEST(PagedKvConfig, AStoragePageIsOneLayersShareOfAPage) {
  const PagedKvConfig c = kinds_config({PagedLayerKind::sliding(8), PagedLayerKind::full()}, 4, 8);
  EXPECT_EQ(c.storage_page_bytes(), c.page_bytes() / c.layer_groups().group_size);
  EXPECT_EQ(small_config(4, 8).storage_page_bytes(), 2u * 4 * kHeads * kDim * 4);
}

class PagedHybridTest : public PagedCacheFixture {
 protected:
  static constexpr std::int32_t kNull = 31;  // of a 32-page pool

  // Layer 0 of `window` (and `sinks`), layer 1 full; pages of 4 tokens.
  PagedKvCache hybrid(PagedLayerKind kind = PagedLayerKind::sliding(8), std::size_t num_pages = 32) const {
    return PagedKvCache(kinds_config({kind, PagedLayerKind::full()}, 4, num_pages), GetParam());
  }
  PagedKvCache full() const { return PagedKvCache(small_config(4, 32), GetParam()); }

  // A step of `count` tokens of `id` with keys data(count, seed) in both layers.
  PagedStepPlan fill(PagedKvCache& cache, SequenceId id, std::size_t count, std::uint32_t seed) const {
    const PagedStepPlan plan = step(cache, {id}, {count});
    write_all(cache, plan, data(count, seed));
    return plan;
  }

  Tensor queries(std::size_t batch) const {
    return Tensor::from_host(random_values(batch * kHeads * kDim, 77, -1.0f, 1.0f), {batch, kHeads, kDim}, DType::F32,
                             GetParam());
  }

  // Checks the device's tables and accounting against the host for `ids` in every layer.
  static void expect_device_agrees(const PagedKvCache& cache, const std::vector<SequenceId>& ids) {
    const std::size_t columns = cache.config().row_capacity();
    for (std::size_t layer = 0; layer < cache.config().n_layers; ++layer) {
      const std::vector<std::int32_t> table = cache.block_table(layer).to_host_i32();
      for (const SequenceId id : ids) {
        const std::vector<std::int32_t> pages = cache.pages_of(id, layer);
        const auto row = static_cast<std::ptrdiff_t>(cache.row_of(id) * columns);
        EXPECT_EQ(std::vector<std::int32_t>(table.begin() + row,
                                            table.begin() + row + static_cast<std::ptrdiff_t>(pages.size())),
                  pages)
            << "layer " << layer;
      }
    }
    const PagedDeviceAccounting device = cache.device_accounting(ids);
    const std::vector<std::int64_t> per = device.per_sequence.to_host_i64();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const PagedSequenceStats s = cache.sequence_stats(ids[i]);
      EXPECT_EQ(std::vector<std::int64_t>(per.begin() + static_cast<std::ptrdiff_t>(4 * i),
                                          per.begin() + static_cast<std::ptrdiff_t>(4 * i + 4)),
                (std::vector<std::int64_t>{static_cast<std::int64_t>(s.tokens), static_cast<std::int64_t>(s.pages),
                                           static_cast<std::int64_t>(s.bytes), static_cast<std::int64_t>(s.slack)}));
    }
    const PagedPoolStats p = cache.pool_stats();
    EXPECT_EQ(
        device.pool.to_host_i64(),
        (std::vector<std::int64_t>{static_cast<std::int64_t>(p.pages_used), static_cast<std::int64_t>(p.pages_shared),
                                   static_cast<std::int64_t>(p.tokens), static_cast<std::int64_t>(p.bytes_used)}));
  }
};

TEST_P(PagedHybridTest, AStepGivesBackTheWindowPagesNoQueryAttends) {
  PagedKvCache cache = hybrid();
  const SequenceId id = cache.add_sequence();
  step(cache, {id}, {20});
  EXPECT_EQ(cache.pool_stats().pages_used, 10u);  // 5 per group
  step(cache, {id}, {1});                         // queries 20..: the window needs tokens 13.., so columns 0-2 go back
  EXPECT_EQ(cache.pages_of(id, 0), (std::vector<std::int32_t>{kNull, kNull, kNull, 3, 4, 2}));
  EXPECT_EQ(cache.pages_of(id, 1), (std::vector<std::int32_t>{5, 6, 7, 8, 9, 1}));
  const PagedPoolStats pool = cache.pool_stats();
  EXPECT_EQ(pool.pages_total, 31u);
  EXPECT_EQ(pool.pages_used, 9u);
  EXPECT_EQ(pool.tokens, 9u + 21u);
  EXPECT_EQ(cache.memory_usage(), 30 * cache.config().slot_bytes());
  const PagedSequenceStats s = cache.sequence_stats(id);
  EXPECT_EQ(s.pages, 9u);
  EXPECT_EQ(s.bytes, 9 * cache.config().page_bytes());
  EXPECT_EQ(s.slack, 6u);
}

TEST_P(PagedHybridTest, TheGivenBackPagesServeTheSameStep) {
  PagedKvCache cache = hybrid(PagedLayerKind::sliding(8), 11);  // 10 pages and the null page
  const SequenceId id = cache.add_sequence();
  step(cache, {id}, {20});
  EXPECT_EQ(cache.pool_stats().pages_free, 0u);
  step(cache, {id}, {1});  // two fresh pages from the three the window gives back
  EXPECT_EQ(cache.pool_stats().pages_free, 1u);
  EXPECT_EQ(cache.length(id), 21u);
}

TEST_P(PagedHybridTest, SinksStayWhileTheMiddleSlidesOut) {
  PagedKvCache cache = hybrid(PagedLayerKind::sinks_and_window(2, 8));
  const SequenceId id = cache.add_sequence();
  step(cache, {id}, {20});
  step(cache, {id}, {1});
  EXPECT_EQ(cache.pages_of(id, 0), (std::vector<std::int32_t>{0, kNull, kNull, 3, 4, 2}));
}

TEST_P(PagedHybridTest, AWindowLayersDecodeAttentionReadsOnlyItsWindow) {
  PagedKvCache cache = hybrid(), reference = full();
  const SequenceId id = cache.add_sequence(), same = reference.add_sequence();
  fill(cache, id, 20, 1);
  fill(reference, same, 20, 1);
  const PagedStepPlan plan = fill(cache, id, 1, 2);
  fill(reference, same, 1, 2);
  ASSERT_TRUE(reference.trim_to(same, 8));  // the window's tokens alone
  const PagedStepPlan window = step(reference, {same}, {0});
  expect_same_bits(cache.decode_attention(0, plan, queries(1)).to_host_f32(),
                   reference.decode_attention(0, window, queries(1)).to_host_f32());
}

// A step that adds no token queries from the sequence's last token, so its
// window reaches one token further back than a step that adds one.
TEST_P(PagedHybridTest, AStepOfNoNewTokenKeepsTheWindowOfItsLastToken) {
  PagedKvCache cache = hybrid(), reference = full();
  const SequenceId id = cache.add_sequence(), same = reference.add_sequence();
  fill(cache, id, 19, 1);
  fill(reference, same, 19, 1);
  const PagedStepPlan plan = step(cache, {id}, {0});  // query 18 attends tokens 11..18: column 2 stays
  EXPECT_EQ(cache.pages_of(id, 0)[1], kNull);
  EXPECT_NE(cache.pages_of(id, 0)[2], kNull);
  ASSERT_TRUE(reference.trim_to(same, 8));
  const PagedStepPlan window = step(reference, {same}, {0});
  expect_same_bits(cache.decode_attention(0, plan, queries(1)).to_host_f32(),
                   reference.decode_attention(0, window, queries(1)).to_host_f32());
}

TEST_P(PagedHybridTest, AnEvictionKeepsTheLastTokensWindowForAStepOfNoNewToken) {
  PagedKvCache cache = hybrid();
  const SequenceId id = cache.add_sequence();
  step(cache, {id}, {20});
  step(cache, {id}, {1});  // tokens 0..11 dropped
  const std::vector<float> before = state(cache, {id});
  expect_error([&] { cache.evict_to_window(id, 2, 7); }, ErrorCode::Config,
               "evict_to_window: sequence 0: layers of window 8 dropped token 1, which would be in their window "
               "after it");  // kept 0, 1, 14..20: a step of no new token queries index 8, attending index 1..
  expect_same_bits(state(cache, {id}), before);
}

TEST_P(PagedHybridTest, ASinksLayersDecodeAttentionReadsItsSinksAndWindow) {
  PagedKvCache cache = hybrid(PagedLayerKind::sinks_and_window(2, 8)), reference = full();
  const SequenceId id = cache.add_sequence(), same = reference.add_sequence();
  fill(cache, id, 20, 1);
  fill(reference, same, 20, 1);
  const PagedStepPlan plan = fill(cache, id, 1, 2);
  fill(reference, same, 1, 2);
  ASSERT_TRUE(reference.evict_to_window(same, 2, 8));
  const PagedStepPlan window = step(reference, {same}, {0});
  expect_same_bits(cache.decode_attention(0, plan, queries(1)).to_host_f32(),
                   reference.decode_attention(0, window, queries(1)).to_host_f32());
}

TEST_P(PagedHybridTest, AFullLayerOfAHybridCacheReadsEveryToken) {
  PagedKvCache cache = hybrid(), reference = full();
  const SequenceId id = cache.add_sequence(), same = reference.add_sequence();
  fill(cache, id, 20, 1);
  fill(reference, same, 20, 1);
  const PagedStepPlan plan = fill(cache, id, 1, 2);
  const PagedStepPlan all = fill(reference, same, 1, 2);
  expect_same_bits(cache.decode_attention(1, plan, queries(1)).to_host_f32(),
                   reference.decode_attention(1, all, queries(1)).to_host_f32());
  expect_same_bits(cache.gather(id, 1).keys.to_host_f32(), reference.gather(same, 1).keys.to_host_f32());
}

TEST_P(PagedHybridTest, ALayersSlotMappingAndKvIndicesAreItsGroupsPart) {
  PagedKvCache cache = hybrid();
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  step(cache, {a, b}, {20, 3});
  const PagedStepPlan plan = step(cache, {a, b}, {1, 2});
  EXPECT_EQ(plan.groups, 2u);
  EXPECT_EQ(plan.slot_mapping.shape(), (Shape{2 * 3}));
  EXPECT_EQ(plan.kv_indices.shape(), (Shape{2 * 8}));
  EXPECT_EQ(plan.kv_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 6, 8}));
  EXPECT_EQ(plan.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{1, 1}));
  for (std::size_t layer = 0; layer < 2; ++layer) {
    std::vector<std::int32_t> indices = cache.pages_of(a, layer);
    const std::vector<std::int32_t> of_b = cache.pages_of(b, layer);
    indices.insert(indices.end(), of_b.begin(), of_b.end());
    EXPECT_EQ(cache.kv_indices(plan, layer).to_host_i32(), indices) << "layer " << layer;
    const auto slot = [&](const std::vector<std::int32_t>& pages, std::size_t t) {
      return static_cast<std::int64_t>(pages[t / 4]) * 4 + static_cast<std::int64_t>(t % 4);
    };
    const std::vector<std::int32_t> pages_a = cache.pages_of(a, layer);
    EXPECT_EQ(cache.slot_mapping(plan, layer).to_host_i64(),
              (std::vector<std::int64_t>{slot(pages_a, 20), slot(of_b, 3), slot(of_b, 4)}))
        << "layer " << layer;
  }
}

TEST_P(PagedHybridTest, AForkSharesWindowPagesUntilEveryHolderDropsThem) {
  PagedKvCache cache = hybrid();
  const SequenceId parent = cache.add_sequence();
  step(cache, {parent}, {20});
  const SequenceId child = cache.fork(parent);
  step(cache, {child}, {1});  // the child drops its references to columns 0-2 of the window group
  EXPECT_EQ(cache.pool_stats().pages_used, 12u);
  EXPECT_EQ(cache.pool_stats().pages_shared, 7u);
  step(cache, {parent}, {1});  // now nobody holds them
  EXPECT_EQ(cache.pool_stats().pages_used, 11u);
  expect_device_agrees(cache, {parent, child});
}

TEST_P(PagedHybridTest, DeviceAgreesWithTheHostAfterEveryKindOfOperation) {
  PagedKvCache cache = hybrid(PagedLayerKind::sinks_and_window(2, 8));
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  step(cache, {a, b}, {21, 6});
  expect_device_agrees(cache, {a, b});
  step(cache, {a, b}, {3, 9});
  expect_device_agrees(cache, {a, b});
  const SequenceId c = cache.fork(a);
  step(cache, {c, a}, {2, 5});
  expect_device_agrees(cache, {a, b, c});
  ASSERT_TRUE(cache.trim_to(c, 7));
  expect_device_agrees(cache, {a, b, c});
  cache.release(b);
  step(cache, {a, c}, {1, 1});
  expect_device_agrees(cache, {a, c});
}

TEST_P(PagedHybridTest, TrimToKeepsAWindowLayersWindow) {
  PagedKvCache cache = hybrid(), reference = full();
  const SequenceId id = cache.add_sequence(), same = reference.add_sequence();
  fill(cache, id, 20, 1);
  fill(reference, same, 20, 1);
  fill(cache, id, 1, 2);
  fill(reference, same, 1, 2);
  ASSERT_TRUE(cache.trim_to(id, 10));  // tokens 11..20; the window layer held 12..20
  ASSERT_TRUE(reference.trim_to(same, 10));
  EXPECT_EQ(cache.positions(id), reference.positions(same));
  const PagedStepPlan plan = fill(cache, id, 1, 3);
  fill(reference, same, 1, 3);
  ASSERT_TRUE(reference.trim_to(same, 8));
  const PagedStepPlan window = step(reference, {same}, {0});
  expect_same_bits(cache.decode_attention(0, plan, queries(1)).to_host_f32(),
                   reference.decode_attention(0, window, queries(1)).to_host_f32());
  expect_device_agrees(cache, {id});
}

TEST_P(PagedHybridTest, AnEvictionThatWouldBringDroppedTokensIntoTheWindowIsRefused) {
  PagedKvCache cache = hybrid();
  const SequenceId id = cache.add_sequence();
  step(cache, {id}, {20});
  step(cache, {id}, {1});
  const std::vector<float> before = state(cache, {id});
  expect_error([&] { cache.evict_to_window(id, 2, 4); }, ErrorCode::Config,
               "evict_to_window: sequence 0: layers of window 8 dropped token 0, which would be in their window "
               "after it");
  expect_same_bits(state(cache, {id}), before);
}

TEST_P(PagedHybridTest, ALoadedCacheContinuesExactly) {
  PagedKvCache cache = hybrid(PagedLayerKind::sinks_and_window(2, 8));
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  const PagedStepPlan first = step(cache, {a, b}, {21, 6});
  write_all(cache, first, data(27, 1));
  step(cache, {a}, {2});
  const ScratchDir dir;
  cache.save(dir.path("hybrid.safetensors"));
  PagedKvCache loaded = PagedKvCache::load(dir.path("hybrid.safetensors"), GetParam());
  EXPECT_EQ(loaded.config().layer_kinds, cache.config().layer_kinds);
  EXPECT_EQ(loaded.state(), cache.state());
  for (PagedKvCache* c : {&cache, &loaded}) {
    const PagedStepPlan next = step(*c, {a, b}, {1, 1});
    write_all(*c, next, data(2, 2));
  }
  EXPECT_EQ(loaded.state(), cache.state());
  expect_same_bits(state(loaded, {a, b}), state(cache, {a, b}));
}

// A window of 1 attends only the query itself: a sequence cut to a token it
// dropped would attend it at its next step (even one adding no token).
TEST_P(PagedHybridTest, AnEvictionToOnlyDroppedTokensIsRefused) {
  PagedKvCache cache = hybrid(PagedLayerKind::sliding(1));
  const SequenceId id = cache.add_sequence();
  fill(cache, id, 6, 1);
  fill(cache, id, 1, 2);  // queries 6..: column 0 (tokens 0..3) goes back
  ASSERT_EQ(cache.pages_of(id, 0)[0], kNull);
  const std::vector<float> before = state(cache, {id});
  expect_error([&] { cache.evict_to_window(id, 1, 0); }, ErrorCode::Config,
               "evict_to_window: sequence 0: layers of window 1 dropped token 0, which would be in their window "
               "after it");
  expect_same_bits(state(cache, {id}), before);
}

TEST_P(PagedHybridTest, RestoreRejectsANullPageInsideTheWindow) {
  PagedKvCache cache = hybrid();
  const SequenceId id = cache.add_sequence();
  step(cache, {id}, {20});
  PagedKvState s = cache.state();
  s.sequences[0].pages[4] = kNull;  // the window group's column 4 holds tokens 16..19
  expect_error([&] { PagedKvCache::restore(cache.config(), s, {}, GetParam()); }, ErrorCode::Config,
               "restore: sequence 0 names the null page in column 4, not in one run after its sinks or attended by "
               "its window");
}

TEST_P(PagedHybridTest, PrefixCachingSharesNothingWithWindowLayers) {
  PagedKvCache cache = hybrid();
  std::vector<std::int32_t> prompt(13);
  std::iota(prompt.begin(), prompt.end(), 1);
  const PrefixHit first = cache.add_sequence(prompt);
  cache.begin_step(std::vector<SequenceId>{first.id}, std::vector<std::size_t>{13}, prompt);
  EXPECT_EQ(cache.add_sequence(prompt).cached_tokens, 0u);
  EXPECT_EQ(cache.prefix_stats().named_pages, 0u);
}

TEST_P(PagedHybridTest, AStepShortOfPagesInAnyGroupChangesNothing) {
  PagedKvCache cache = hybrid(PagedLayerKind::sliding(8), 12);  // 11 pages
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  step(cache, {a}, {20});
  const std::vector<float> before = state(cache, {a, b});
  expect_error(
      [&] {
        step(cache, {a, b}, {1, 5});
      },
      ErrorCode::OutOfMemory,
      "begin_step: needs 6 pages (0 copied on write), 1 free (+3 window layers give back) and 0 cached of 11");
  expect_same_bits(state(cache, {a, b}), before);
  EXPECT_EQ(cache.pages_of(a, 0)[0], 0);  // nothing was given back
}

TEST_P(PagedHybridTest, EveryMutatorKeepsTheStrongGuaranteeUnderFaultInjection) {
  const auto make = [&] {
    PagedKvCache cache = hybrid(PagedLayerKind::sinks_and_window(2, 8));
    const SequenceId id = cache.add_sequence();
    step(cache, {id}, {21});
    return cache;
  };
  const auto render = [](const PagedKvCache& cache) { return state(cache, {SequenceId{0}}); };
  sweep<PagedKvCache>(
      GetParam(), make,
      [](PagedKvCache& cache) {
        cache.begin_step(std::vector<SequenceId>{SequenceId{0}}, std::vector<std::size_t>{3});
      },
      render);
  sweep<PagedKvCache>(
      GetParam(), make, [](PagedKvCache& cache) { cache.trim_to(SequenceId{0}, 9); }, render);
}

// Gemma 3: five sliding-window layers (1024) per global layer. At 32k tokens a
// window layer holds its window's 65 pages (64 + the partly filled one),
// a full layer 2048: 5 x 65 + 2048 pages of one layer against 6 x 2048.
TEST_P(PagedHybridTest, AGemma3LikeModelHoldsAFractionOfTheAllFullBytes) {
  const PagedLayerKind w = PagedLayerKind::sliding(1024), f = PagedLayerKind::full();
  PagedKvConfig hybrid_config = kinds_config({w, w, w, w, w, f}, 16, 12400);
  hybrid_config.max_sequences = 1;
  PagedKvConfig full_config = small_config(16, 2100);
  full_config.n_layers = 6;
  full_config.max_sequences = 1;
  PagedKvCache hybrid_cache(hybrid_config, GetParam()), full_cache(full_config, GetParam());
  for (PagedKvCache* c : {&hybrid_cache, &full_cache}) {
    const SequenceId id = c->add_sequence();
    for (std::size_t chunk = 0; chunk < 32; ++chunk) step(*c, {id}, {1024});  // chunked prefill
    step(*c, {id}, {1});                                                      // the first decode step
  }
  // 32769 tokens: a window group keeps columns 1984.. (tokens 31744..32768), 65 pages.
  EXPECT_EQ(hybrid_cache.pool_stats().pages_used, 5u * 65 + 2049);
  EXPECT_EQ(full_cache.pool_stats().pages_used, 2049u);
  EXPECT_EQ(hybrid_cache.pool_stats().bytes_used, (5u * 65 + 2049) * hybrid_config.page_bytes());
  EXPECT_EQ(full_cache.pool_stats().bytes_used, 2049u * 6 * hybrid_config.page_bytes());
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedHybridTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
