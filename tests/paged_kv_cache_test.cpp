// PagedKvCache: the config and its byte budgets, the page pool, sequences,
// forks with copy on write, a step's metadata against hand-computed values,
// writes that land where the slot and layout say, gathers, decode attention
// against a dense attention over the gathers, accounting, bad input and
// injected allocation failures.
#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include "fault_sweep.hpp"
#include "paged_support.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

// ---- the config (host only) ----

TEST(PagedKvConfig, ZeroDimensionsAreConfigErrorsNamingTheField) {
  PagedKvConfig c = small_config(16, 8);
  c.kv_heads = 0;
  expect_error([&] { c.validate(); }, ErrorCode::Config, "PagedKvConfig.kv_heads must be >= 1, got 0");
  c = small_config(16, 8);
  c.n_layers = 0;
  expect_error([&] { c.validate(); }, ErrorCode::Config, "PagedKvConfig.n_layers must be >= 1, got 0");
}

TEST(PagedKvConfig, PageSizeMustBeAPowerOfTwo) {
  for (const std::size_t bad : {std::size_t{0}, std::size_t{12}, std::size_t{1} << 31}) {
    expect_error([&] { small_config(bad, 8).validate(); }, ErrorCode::Config,
                 "PagedKvConfig.page_size must be a power of two in 1..=1073741824, got " + std::to_string(bad));
  }
  EXPECT_NO_THROW(small_config(1, 8).validate());
  EXPECT_EQ(PagedKvConfig{}.page_size, 16u);
}

TEST(PagedKvConfig, DtypeMustBeAFloatType) {
  expect_error([&] { small_config(16, 8, PagedLayout::Nhd, DType::I32).validate(); }, ErrorCode::Config,
               "PagedKvConfig.dtype must be f32, f16 or bf16, got i32");
}

TEST(PagedKvConfig, ExactlyOneOfNumPagesAndMaxBytes) {
  PagedKvConfig c = small_config(16, 0);
  expect_error([&] { c.validate(); }, ErrorCode::Config, "PagedKvConfig: set num_pages or max_bytes, got neither");
  c.num_pages = 8;
  c.max_bytes = 4096;
  expect_error([&] { c.validate(); }, ErrorCode::Config,
               "PagedKvConfig: set num_pages or max_bytes, got both (num_pages=8, max_bytes=4096)");
}

TEST(PagedKvConfig, ByteCountsOfEveryLayer) {
  const PagedKvConfig c = small_config(4, 8, PagedLayout::Nhd, DType::F16);
  EXPECT_EQ(c.bytes_per_token(), 2u * 2 * kHeads * kDim * 2);  // keys and values, 2 layers, f16
  EXPECT_EQ(c.page_bytes(), 4 * c.bytes_per_token());
  EXPECT_EQ(c.reserved_bytes(), 8 * c.page_bytes());
}

TEST(PagedKvConfig, ByteBudgetGivesTheWholePagesThatFit) {
  PagedKvConfig c = small_config(4, 0, PagedLayout::Nhd, DType::F16);  // 256-byte pages
  c.max_bytes = 1000;
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.pages(), 3u);
  EXPECT_EQ(c.reserved_bytes(), 768u);
  c.max_bytes = 100;
  expect_error([&] { c.validate(); }, ErrorCode::Config, "PagedKvConfig.max_bytes 100 is below one page (256 bytes)");
}

TEST(PagedKvConfig, ByteCountsThatOverflowAreConfigErrors) {
  PagedKvConfig c = small_config(16, 8);
  c.head_dim = std::size_t{1} << 62;
  expect_error([&] { c.validate(); }, ErrorCode::Config,
               "PagedKvConfig: bytes_per_token (2 x n_layers 2 x kv_heads 2 x head_dim 4611686018427387904 x 4 "
               "bytes) overflows size_t");
  c = small_config(std::size_t{1} << 30, 8);
  c.kv_heads = std::size_t{1} << 30;
  EXPECT_THROW(c.validate(), Error);
  c = small_config(16, 0x7fffffff);
  c.head_dim = std::size_t{1} << 40;
  expect_error([&] { (void)c.reserved_bytes(); }, ErrorCode::Config,
               "PagedKvConfig: reserved_bytes (pages 2147483647 x page_bytes 562949953421312) overflows size_t");
}

TEST(PagedKvConfig, PageIdsMustFitInt32) {
  expect_error([&] { small_config(16, std::size_t{1} << 31).validate(); }, ErrorCode::Config,
               "PagedKvConfig.num_pages must be <= 2147483647 (kv_indices are int32), got 2147483648");
}

// ---- the cache, once per backend ----

class PagedKvCacheTest : public PagedCacheFixture {};

TEST_P(PagedKvCacheTest, PagesAreAllocatedOnceAtConstructionAndAccounted) {
  Backend& backend = backend_for(GetParam());
  const std::size_t before = backend.memory_stats().in_use;
  PagedKvCache cache = make(4, 8);
  const std::size_t page_tensor = 8 * 2 * 4 * kHeads * kDim * sizeof(float);
  EXPECT_EQ(cache.config().table_bytes(), 1024u * (8 + 1) * 4);  // 1024 rows of 8 page ids and a length
  EXPECT_EQ(cache.memory_reserved(), 2 * page_tensor + cache.config().table_bytes());
  EXPECT_EQ(backend.memory_stats().in_use - before, cache.memory_reserved());
  const SequenceId a = sequence(cache, 13);
  { const PagedStepPlan plan = step(cache, {a}, {3}); }
  EXPECT_EQ(backend.memory_stats().in_use - before, cache.memory_reserved());  // plans come and go; pages stay
  EXPECT_EQ(cache.memory_usage(), 16 * cache.config().bytes_per_token());
}

TEST_P(PagedKvCacheTest, PageTensorsHaveFlashInfersShapeAndShareTheCachesStorage) {
  const PagedKvCache nhd = make(4, 8, PagedLayout::Nhd, DType::BF16);
  EXPECT_EQ(nhd.pages(1).shape(), (Shape{8, 2, 4, kHeads, kDim}));
  EXPECT_EQ(nhd.pages(1).dtype(), DType::BF16);
  EXPECT_EQ(nhd.page_layout(1).data, nhd.pages(1).data());
  const PagedKvCache hnd = make(4, 8, PagedLayout::Hnd);
  EXPECT_EQ(hnd.pages(0).shape(), (Shape{8, 2, kHeads, 4, kDim}));
  const PagedPages layout = hnd.page_layout(0);
  EXPECT_EQ(layout.layout, PagedLayout::Hnd);
  EXPECT_EQ(layout.num_pages, 8u);
  EXPECT_EQ(layout.page_size, 4u);
  EXPECT_EQ(layout.page_elements(), 2 * 4 * kHeads * kDim);
  expect_error([&] { (void)hnd.pages(2); }, ErrorCode::Hook, "layer 2 out of range (layers=2)");
}

TEST_P(PagedKvCacheTest, ReleaseReturnsEveryPageToThePool) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = sequence(cache, 10), b = sequence(cache, 4);
  EXPECT_EQ(cache.num_sequences(), 2u);
  EXPECT_EQ(cache.pool_stats().pages_used, 4u);
  EXPECT_EQ(cache.pool_stats().pages_free, 4u);
  cache.release(a);
  EXPECT_EQ(cache.pool_stats().pages_used, 1u);
  EXPECT_EQ(cache.pool_stats().tokens, 4u);
  cache.release(b);
  EXPECT_EQ(cache.num_sequences(), 0u);
  EXPECT_EQ(cache.pool_stats().pages_free, 8u);
  EXPECT_EQ(cache.memory_usage(), 0u);
}

TEST_P(PagedKvCacheTest, StepMetadataWithPageSize4MatchesHandComputedValues) {
  PagedKvCache cache = make(4, 16);
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence(), c = cache.add_sequence();
  PagedStepPlan p = step(cache, {a, b, c}, {5, 0, 8});  // a: pages 0 1, b: none, c: pages 2 3
  EXPECT_EQ(p.batch, 3u);
  EXPECT_EQ(p.total_new, 13u);
  EXPECT_EQ(p.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(p.kv_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 2, 2, 4}));
  EXPECT_EQ(p.kv_indices.to_host_i32(), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{1, 0, 4}));
  EXPECT_EQ(p.qo_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 5, 5, 13}));

  p = step(cache, {c, a}, {1, 3});  // c: new page 4; a fills page 1
  EXPECT_EQ(p.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{16, 5, 6, 7}));
  EXPECT_EQ(p.kv_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 3, 5}));
  EXPECT_EQ(p.kv_indices.to_host_i32(), (std::vector<std::int32_t>{2, 3, 4, 0, 1}));
  EXPECT_EQ(p.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{1, 4}));
  EXPECT_EQ(p.qo_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 1, 4}));

  cache.release(c);  // pages 4, 3, 2 go back, last page first; the last returned is handed out first
  p = step(cache, {a}, {5});
  EXPECT_EQ(p.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{8, 9, 10, 11, 12}));
  EXPECT_EQ(p.kv_indices.to_host_i32(), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{1}));
  EXPECT_EQ(cache.pages_of(a), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(cache.length(b), 0u);
}

TEST_P(PagedKvCacheTest, StepMetadataWithPageSize16MatchesHandComputedValues) {
  PagedKvCache cache = make(16, 8);
  const SequenceId x = cache.add_sequence(), y = cache.add_sequence(), z = cache.add_sequence();
  PagedStepPlan p = step(cache, {x, y, z}, {20, 1, 16});  // prefill: x pages 0 1, y page 2, z page 3
  std::vector<std::int64_t> slots;
  for (std::int64_t s = 0; s < 20; ++s) slots.push_back(s);
  slots.push_back(32);
  for (std::int64_t s = 48; s < 64; ++s) slots.push_back(s);
  EXPECT_EQ(p.slot_mapping.to_host_i64(), slots);
  EXPECT_EQ(p.kv_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 2, 3, 4}));
  EXPECT_EQ(p.kv_indices.to_host_i32(), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{4, 1, 16}));
  EXPECT_EQ(p.qo_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 20, 21, 37}));

  p = step(cache, {x, y, z}, {1, 1, 1});  // decode: z starts page 4
  EXPECT_EQ(p.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{20, 33, 64}));
  EXPECT_EQ(p.kv_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 2, 3, 5}));
  EXPECT_EQ(p.kv_indices.to_host_i32(), (std::vector<std::int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(p.kv_last_page_len.to_host_i32(), (std::vector<std::int32_t>{5, 2, 1}));
  EXPECT_EQ(p.qo_indptr.to_host_i32(), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.slot_mapping.device(), GetParam());
}

TEST_P(PagedKvCacheTest, StepArraysAreViewsOfOneAccountedDeviceBuffer) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  Backend& backend = backend_for(GetParam());
  const std::size_t before = backend.memory_stats().in_use;
  PagedStepPlan p = step(cache, {a}, {6});
  // The outputs: slot_mapping 48 bytes, then four 16-byte-aligned int32
  // arrays, 8 + 8 + 4 + 8 bytes; then the inputs: row, length and new count
  // (4 each), update_indptr (8), the 2 updates' columns and pages (8 each).
  EXPECT_EQ(backend.memory_stats().in_use - before, 48u + 16 + 16 + 16 + 16 + 16 + 16 + 16 + 16 + 16 + 8);
  const auto* base = static_cast<const std::byte*>(p.slot_mapping.data());
  EXPECT_EQ(static_cast<const std::byte*>(p.kv_indptr.data()) - base, 48);
  EXPECT_EQ(static_cast<const std::byte*>(p.qo_indptr.data()) - base, 96);
  const Tensor kept = p.kv_indices;
  p = PagedStepPlan{};
  EXPECT_EQ(kept.to_host_i32(), (std::vector<std::int32_t>{0, 1}));  // one view keeps the buffer alive
}

TEST_P(PagedKvCacheTest, StepThatDoesNotFitChangesNothingAndSaysOutOfMemory) {
  PagedKvCache cache = make(4, 4);
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  write_all(cache, step(cache, {a, b}, {6, 4}), data(10, 4));  // 1 page free
  const PagedStepPlan last = step(cache, {a, b}, {0, 0});
  const std::vector<float> before = state(cache, {a, b});
  expect_error(
      [&] {
        step(cache, {a, b}, {3, 1});
      },
      ErrorCode::OutOfMemory, "begin_step: needs 2 pages (0 copied on write), 1 free and 0 cached of 4");
  expect_error([&] { step(cache, {a}, {100}); }, ErrorCode::OutOfMemory,
               "begin_step: sequence 0 of 6 tokens cannot grow by 100 in a pool of 16 slots");
  expect_same_bits(state(cache, {a, b}), before);
  EXPECT_EQ(cache.pool_stats().pages_free, 1u);
  EXPECT_NO_THROW(write_all(cache, last, {}));  // the last plan is still the current one
}

TEST_P(PagedKvCacheTest, WriteThenGatherRoundTripsInEveryLayoutAndDtype) {
  for (const PagedLayout layout : {PagedLayout::Nhd, PagedLayout::Hnd}) {
    for (const DType dtype : {DType::F32, DType::F16, DType::BF16}) {
      SCOPED_TRACE(std::string(layout == PagedLayout::Nhd ? "nhd " : "hnd ") + dtype_name(dtype));
      PagedKvCache cache = make(4, 16, layout, dtype);
      const SequenceId a = cache.add_sequence(), b = cache.add_sequence(), c = cache.add_sequence();
      std::map<SequenceId, std::vector<std::vector<float>>> rows;  // keys as given, token by token
      std::uint32_t seed = 1;
      const auto run = [&](std::vector<SequenceId> ids, std::vector<std::size_t> counts) {
        const PagedStepPlan plan = step(cache, ids, counts);
        const std::vector<float> keys = data(plan.total_new, seed++);
        write_all(cache, plan, keys, dtype);
        std::size_t t = 0;
        for (std::size_t i = 0; i < ids.size(); ++i) {
          for (std::size_t n = 0; n < counts[i]; ++n, ++t) {
            rows[ids[i]].emplace_back(keys.begin() + t * kHeads * kDim, keys.begin() + (t + 1) * kHeads * kDim);
          }
        }
      };
      run({a, b, c}, {7, 1, 4});
      run({c, a}, {1, 2});
      run({b, c, a}, {5, 3, 1});
      for (const SequenceId id : {a, b, c}) {
        const PagedKv kv = cache.gather(id, 1);
        ASSERT_EQ(kv.keys.shape(), (Shape{1, kHeads, cache.length(id), kDim}));
        std::vector<float> keys = dense(rows[id]), values = keys;  // layer 1: keys + 100, values + 110
        for (float& k : keys) k += 100.0f;
        for (float& v : values) v += 110.0f;
        expect_same_bits(kv.keys.to_host_f32(), rounded_to(keys, dtype));
        expect_same_bits(kv.values.to_host_f32(), rounded_to(values, dtype));
      }
    }
  }
}

TEST_P(PagedKvCacheTest, WrittenTokenLandsExactlyWhereItsSlotAndTheLayoutSay) {
  for (const PagedLayout layout : {PagedLayout::Nhd, PagedLayout::Hnd}) {
    PagedKvCache cache = make(4, 4, layout);
    const SequenceId a = sequence(cache, 6);  // pages 0 1; the next token is page 1 offset 2
    const PagedStepPlan plan = step(cache, {a}, {1});
    ASSERT_EQ(plan.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{6}));
    const std::vector<float> before = cache.pages(0).to_host_f32();
    const std::vector<float> keys = data(1, 7), values = data(1, 8);
    cache.write(0, plan, tensor(keys), tensor(values));
    const std::vector<float> after = cache.pages(0).to_host_f32();
    std::vector<float> expected = before;
    const PagedPages pages = cache.page_layout(0);
    for (std::size_t h = 0; h < kHeads; ++h) {
      for (std::size_t d = 0; d < kDim; ++d) {
        expected[pages.element(1, 0, 2, h, d)] = keys[h * kDim + d];
        expected[pages.element(1, 1, 2, h, d)] = values[h * kDim + d];
      }
    }
    expect_same_bits(after, expected);
  }
}

TEST_P(PagedKvCacheTest, ForkSharesEveryPage) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = sequence(cache, 6);
  const SequenceId b = cache.fork(a);
  EXPECT_NE(a, b);
  EXPECT_EQ(cache.pages_of(b), cache.pages_of(a));
  EXPECT_EQ(cache.length(b), 6u);
  EXPECT_EQ(cache.positions(b), cache.positions(a));
  const PagedPoolStats s = cache.pool_stats();
  EXPECT_EQ(s.pages_used, 2u);
  EXPECT_EQ(s.pages_shared, 2u);
  EXPECT_EQ(s.tokens, 6u);
  EXPECT_EQ(cache.sequence_stats(b).pages, 2u);
  EXPECT_EQ(cache.sequence_stats(b).bytes, 2 * cache.config().page_bytes());
}

TEST_P(PagedKvCacheTest, FirstWriteAfterForkCopiesThePartialLastPage) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  write_all(cache, step(cache, {a}, {6}), data(6, 1));
  const SequenceId b = cache.fork(a);
  const PagedKv parent_kv = cache.gather(a, 1);

  const PagedStepPlan plan = step(cache, {b}, {1});
  EXPECT_EQ(cache.pages_of(b), (std::vector<std::int32_t>{0, 2}));  // page 1 copied to page 2
  EXPECT_EQ(plan.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{10}));
  EXPECT_EQ(plan.kv_indices.to_host_i32(), (std::vector<std::int32_t>{0, 2}));
  const std::vector<float> token = data(1, 2);
  write_all(cache, plan, token);

  EXPECT_EQ(cache.pages_of(a), (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(cache.length(a), 6u);
  expect_same_bits(cache.gather(a, 1).keys.to_host_f32(), parent_kv.keys.to_host_f32());
  expect_same_bits(cache.gather(a, 1).values.to_host_f32(), parent_kv.values.to_host_f32());
  const std::vector<float> child = cache.gather(b, 1).keys.to_host_f32();  // [1, 2, 7, 4]
  const std::vector<float> old_keys = parent_kv.keys.to_host_f32();        // [1, 2, 6, 4]
  for (std::size_t h = 0; h < kHeads; ++h) {
    for (std::size_t d = 0; d < kDim; ++d) {
      for (std::size_t t = 0; t < 6; ++t) EXPECT_EQ(child[(h * 7 + t) * kDim + d], old_keys[(h * 6 + t) * kDim + d]);
      EXPECT_EQ(child[(h * 7 + 6) * kDim + d], token[h * kDim + d] + 100.0f);
    }
  }
  const PagedPoolStats s = cache.pool_stats();
  EXPECT_EQ(s.pages_used, 3u);
  EXPECT_EQ(s.pages_shared, 1u);
  EXPECT_EQ(s.tokens, 6u + 2 + 1);  // the two copied tokens are stored twice
  EXPECT_EQ(cache.memory_usage(), 9 * cache.config().bytes_per_token());
}

TEST_P(PagedKvCacheTest, WhenEveryHolderWritesTheLastInIdOrderKeepsTheSharedPage) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = sequence(cache, 6);
  const SequenceId b = cache.fork(a);
  const PagedStepPlan plan = step(cache, {a, b}, {1, 1});
  EXPECT_EQ(cache.pages_of(a), (std::vector<std::int32_t>{0, 2}));
  EXPECT_EQ(cache.pages_of(b), (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(plan.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{10, 6}));
  EXPECT_EQ(cache.pool_stats().pages_used, 3u);
  EXPECT_EQ(cache.pool_stats().pages_shared, 1u);
}

TEST_P(PagedKvCacheTest, ForkOfAFullLastPageCopiesNothing) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = sequence(cache, 8);
  const SequenceId b = cache.fork(a);
  const PagedStepPlan plan = step(cache, {b}, {1});
  EXPECT_EQ(cache.pages_of(b), (std::vector<std::int32_t>{0, 1, 2}));
  EXPECT_EQ(plan.slot_mapping.to_host_i64(), (std::vector<std::int64_t>{8}));
  EXPECT_EQ(cache.pool_stats().tokens, 9u);
}

TEST_P(PagedKvCacheTest, CopyOnWritePagesCountTowardsAStepThatDoesNotFit) {
  PagedKvCache cache = make(4, 2);
  const SequenceId a = sequence(cache, 6);
  const SequenceId b = cache.fork(a);
  expect_error([&] { step(cache, {b}, {1}); }, ErrorCode::OutOfMemory,
               "begin_step: needs 1 pages (1 copied on write), 0 free and 0 cached of 2");
  EXPECT_EQ(cache.pages_of(b), cache.pages_of(a));
  EXPECT_EQ(cache.length(b), 6u);
}

TEST_P(PagedKvCacheTest, ReleasingTheParentKeepsTheChildsPages) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  write_all(cache, step(cache, {a}, {6}), data(6, 3));
  const SequenceId b = cache.fork(a);
  const std::vector<float> keys = cache.gather(b, 0).keys.to_host_f32();
  cache.release(a);
  EXPECT_EQ(cache.pages_of(b), (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(cache.pool_stats().pages_used, 2u);
  EXPECT_EQ(cache.pool_stats().pages_shared, 0u);
  EXPECT_EQ(cache.pool_stats().tokens, 6u);
  expect_same_bits(cache.gather(b, 0).keys.to_host_f32(), keys);
  cache.release(b);
  EXPECT_EQ(cache.pool_stats().pages_free, 8u);
}

TEST_P(PagedKvCacheTest, PositionsCountEveryTokenOfTheSequence) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = sequence(cache, 3);
  step(cache, {a}, {2});
  EXPECT_EQ(cache.positions(a), (std::vector<std::size_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(cache.positions(cache.fork(a)), cache.positions(a));
  EXPECT_TRUE(cache.positions(cache.add_sequence()).empty());
}

TEST_P(PagedKvCacheTest, SequenceStatsCountTokensPagesAndBytes) {
  PagedKvCache cache = make(4, 8, PagedLayout::Nhd, DType::F16);
  const SequenceId a = sequence(cache, 9);
  const PagedSequenceStats s = cache.sequence_stats(a);
  EXPECT_EQ(s.tokens, 9u);
  EXPECT_EQ(s.pages, 3u);
  EXPECT_EQ(s.bytes, 3 * cache.config().page_bytes());
  EXPECT_EQ(s.slack, 3u);
  const PagedPoolStats pool = cache.pool_stats();
  EXPECT_EQ(pool.pages_total, 8u);
  EXPECT_EQ(pool.bytes_used, 3 * cache.config().page_bytes());
  EXPECT_EQ(pool.bytes_free + pool.bytes_used, pool.bytes_total);
  EXPECT_EQ(pool.bytes_total + cache.config().table_bytes(), cache.memory_reserved());
  EXPECT_EQ(cache.memory_usage(), 9 * cache.config().bytes_per_token());
}

TEST_P(PagedKvCacheTest, UnknownAndReleasedIdsAreHookErrorsNamingThem) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  cache.release(a);
  expect_error([&] { cache.release(a); }, ErrorCode::Hook, "release: unknown sequence 0 (never added, or released)");
  expect_error([&] { (void)cache.fork(SequenceId{7}); }, ErrorCode::Hook,
               "fork: unknown sequence 7 (never added, or released)");
  expect_error([&] { (void)cache.length(a); }, ErrorCode::Hook,
               "length: unknown sequence 0 (never added, or released)");
  expect_error([&] { (void)cache.gather(a, 0); }, ErrorCode::Hook,
               "gather: unknown sequence 0 (never added, or released)");
  const SequenceId b = sequence(cache, 2);
  expect_error(
      [&] {
        step(cache, {b, a}, {1, 1});
      },
      ErrorCode::Hook, "begin_step: unknown sequence 0 (never added, or released)");
  EXPECT_EQ(cache.length(b), 2u);
  EXPECT_NE(cache.add_sequence(), a);  // ids are never reused
}

TEST_P(PagedKvCacheTest, BeginStepRejectsRepeatedIdsAndMismatchedCounts) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  expect_error(
      [&] {
        step(cache, {a, b, a}, {1, 1, 1});
      },
      ErrorCode::Config, "begin_step: sequence 0 listed twice (entries 0 and 2)");
  expect_error([&] { step(cache, {a, b}, {1}); }, ErrorCode::Shape, "begin_step: 2 ids and 1 new token counts");
  EXPECT_EQ(cache.length(a), 0u);
  EXPECT_EQ(cache.pool_stats().pages_used, 0u);
}

TEST_P(PagedKvCacheTest, WriteChecksItsPlanAndTokens) {
  PagedKvCache cache = make(4, 8);
  PagedKvCache other = make(4, 8);
  const SequenceId a = cache.add_sequence();
  const PagedStepPlan old = step(cache, {a}, {2});
  const PagedStepPlan plan = step(cache, {a}, {2});
  const Tensor k = tensor(data(2, 1)), v = tensor(data(2, 2));
  expect_error([&] { cache.write(0, old, k, v); }, ErrorCode::Config,
               "write: the plan is of step 1, the cache is at step 2");
  expect_error([&] { other.write(0, plan, k, v); }, ErrorCode::Config,
               "write: the plan is of another cache (or of none)");
  expect_error([&] { cache.write(2, plan, k, v); }, ErrorCode::Hook, "layer 2 out of range (layers=2)");
  expect_error([&] { cache.write(0, plan, tensor(data(3, 1)), v); }, ErrorCode::Shape,
               "write: keys [3, 2, 4] must be [2, 2, 4] ([total_new, kv_heads, head_dim])");
  expect_error(
      [&] {
        cache.write(0, plan, k, Tensor::from_host(data(2, 2), {2, 8}, DType::F32, GetParam()));
      },
      ErrorCode::Shape, "write: values must be [total_new, kv_heads, head_dim], got rank 2 [2, 8]");
  expect_error([&] { cache.write(0, plan, k, tensor(data(2, 2), DType::BF16)); }, ErrorCode::Config,
               "write: values are bf16, the pages f32");
  expect_error([&] { cache.write(0, plan, Tensor(), v); }, ErrorCode::Config, "write: keys: undefined tensor");
  EXPECT_NO_THROW(cache.write(0, plan, k, v));
}

// ---- decode attention ----

// Softmax(scale q.k) v of every query head of `queries` ([batch, qo_heads,
// head_dim]) over the dense keys and values gather() gives each sequence,
// in double: what FlashInfer's metadata must mean.
std::vector<double> dense_attention(const PagedKvCache& cache, std::size_t layer, const std::vector<SequenceId>& ids,
                                    const std::vector<float>& queries, std::size_t qo_heads, float scale) {
  const std::size_t kv_heads = cache.config().kv_heads, dim = cache.config().head_dim;
  std::vector<double> out;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const PagedKv kv = cache.gather(ids[i], layer);
    const std::vector<float> keys = kv.keys.to_host_f32(), values = kv.values.to_host_f32();
    const std::size_t len = cache.length(ids[i]);
    for (std::size_t q = 0; q < qo_heads; ++q) {
      const std::size_t head = q / (qo_heads / kv_heads);
      std::vector<double> scores(len);
      double max = -std::numeric_limits<double>::infinity(), total = 0.0;
      for (std::size_t t = 0; t < len; ++t) {
        double dot = 0.0;
        for (std::size_t d = 0; d < dim; ++d) {
          dot += double{queries[(i * qo_heads + q) * dim + d]} * keys[(head * len + t) * dim + d];
        }
        scores[t] = scale * dot;
        max = std::max(max, scores[t]);
      }
      std::vector<double> acc(dim, 0.0);
      for (std::size_t t = 0; t < len; ++t) {
        const double w = std::exp(scores[t] - max);
        total += w;
        for (std::size_t d = 0; d < dim; ++d) acc[d] += w * values[(head * len + t) * dim + d];
      }
      for (std::size_t d = 0; d < dim; ++d) out.push_back(len == 0 ? 0.0 : acc[d] / total);
    }
  }
  return out;
}

TEST_P(PagedKvCacheTest, DecodeAttentionEqualsDenseAttentionOverTheGatheredSequences) {
  for (const PagedLayout layout : {PagedLayout::Nhd, PagedLayout::Hnd}) {
    for (const DType dtype : {DType::F32, DType::BF16}) {
      for (const std::size_t group : {std::size_t{1}, std::size_t{4}}) {
        SCOPED_TRACE(std::string(layout == PagedLayout::Nhd ? "nhd " : "hnd ") + dtype_name(dtype) + " group " +
                     std::to_string(group));
        const std::size_t kv_heads = 2, dim = 16, qo_heads = kv_heads * group;
        PagedKvCache cache(PagedKvConfig{.n_layers = 2,
                                         .kv_heads = kv_heads,
                                         .head_dim = dim,
                                         .page_size = 4,
                                         .num_pages = 32,
                                         .dtype = dtype,
                                         .layout = layout},
                           GetParam());
        const SequenceId a = cache.add_sequence(), b = cache.add_sequence(), c = cache.add_sequence();
        const SequenceId empty = cache.add_sequence();
        std::uint32_t seed = 1;
        const auto run = [&](std::vector<SequenceId> ids, std::vector<std::size_t> counts) {
          const PagedStepPlan plan = cache.begin_step(ids, counts);
          for (std::size_t l = 0; l < 2; ++l) {
            const Shape shape{plan.total_new, kv_heads, dim};
            const std::size_t n = plan.total_new * kv_heads * dim;
            const Tensor keys = Tensor::from_host(random_values(n, seed++, -2.0f, 2.0f), shape, dtype, GetParam());
            const Tensor values = Tensor::from_host(random_values(n, seed++, -2.0f, 2.0f), shape, dtype, GetParam());
            cache.write(l, plan, keys, values);
          }
          return plan;
        };
        run({a, b, c}, {9, 3, 4});
        const SequenceId d = cache.fork(a);
        run({a, d, c}, {2, 1, 4});
        const std::vector<SequenceId> ids{a, b, empty, c, d};
        const PagedStepPlan plan = run(ids, {1, 1, 0, 1, 1});  // lengths 12, 4, 0, 9, 11
        const std::vector<float> queries =
            rounded_to(random_values(ids.size() * qo_heads * dim, 99, -1.0f, 1.0f), dtype);
        const Tensor q = Tensor::from_host(queries, {ids.size(), qo_heads, dim}, dtype, GetParam());
        for (std::size_t layer = 0; layer < 2; ++layer) {
          const Tensor out = cache.decode_attention(layer, plan, q);
          ASSERT_EQ(out.shape(), (Shape{ids.size(), qo_heads, dim}));
          ASSERT_EQ(out.dtype(), DType::F32);
          const std::vector<float> got = out.to_host_f32();
          const std::vector<double> want =
              dense_attention(cache, layer, ids, queries, qo_heads, 1.0f / std::sqrt(static_cast<float>(dim)));
          ASSERT_EQ(got.size(), want.size());
          for (std::size_t e = 0; e < got.size(); ++e) EXPECT_NEAR(got[e], want[e], 2e-6) << "element " << e;
        }
      }
    }
  }
}

TEST_P(PagedKvCacheTest, DecodeAttentionOfAnEmptySequenceIsZeros) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  const PagedStepPlan plan = step(cache, {a}, {0});
  const Tensor q = Tensor::from_host(data(1, 1), {1, kHeads, kDim}, DType::F32, GetParam());
  expect_same_bits(cache.decode_attention(0, plan, q).to_host_f32(), std::vector<float>(kHeads * kDim, 0.0f));
}

TEST_P(PagedKvCacheTest, DecodeAttentionScaleZeroMeansOneOverSqrtHeadDim) {
  PagedKvCache cache = make(4, 8);
  const SequenceId a = cache.add_sequence();
  const PagedStepPlan plan = step(cache, {a}, {6});
  write_all(cache, plan, data(6, 1));
  const Tensor q = Tensor::from_host(data(1, 2), {1, kHeads, kDim}, DType::F32, GetParam());
  expect_same_bits(cache.decode_attention(1, plan, q).to_host_f32(),
                   cache.decode_attention(1, plan, q, 0.5f).to_host_f32());  // kDim = 4
  const std::vector<float> scaled = cache.decode_attention(1, plan, q, 3.0f).to_host_f32();
  EXPECT_NE(scaled, cache.decode_attention(1, plan, q).to_host_f32());
}

TEST_P(PagedKvCacheTest, DecodeAttentionChecksItsPlanAndQueries) {
  PagedKvCache cache = make(4, 8);
  PagedKvCache other = make(4, 8);
  const SequenceId a = cache.add_sequence();
  const PagedStepPlan old = step(cache, {a}, {2});
  const PagedStepPlan plan = step(cache, {a}, {2});
  const Tensor q = Tensor::from_host(data(1, 1), {1, kHeads, kDim}, DType::F32, GetParam());
  expect_error([&] { cache.decode_attention(0, old, q); }, ErrorCode::Config,
               "decode_attention: the plan is of step 1, the cache is at step 2");
  expect_error([&] { other.decode_attention(0, plan, q); }, ErrorCode::Config,
               "decode_attention: the plan is of another cache (or of none)");
  expect_error([&] { cache.decode_attention(2, plan, q); }, ErrorCode::Hook, "layer 2 out of range (layers=2)");
  expect_error([&] { cache.decode_attention(0, plan, Tensor()); }, ErrorCode::Config,
               "decode_attention: queries: undefined tensor");
  expect_error(
      [&] {
        cache.decode_attention(0, plan, Tensor::from_host(data(1, 1), {kHeads, kDim}, DType::F32, GetParam()));
      },
      ErrorCode::Shape, "decode_attention: queries must be [batch, qo_heads, head_dim], got rank 2 [2, 4]");
  expect_error(
      [&] {
        cache.decode_attention(0, plan, Tensor::from_host(data(2, 1), {2, kHeads, kDim}, DType::F32, GetParam()));
      },
      ErrorCode::Shape, "decode_attention: queries [2, 2, 4] must be [1, qo_heads, 4] ([batch, qo_heads, head_dim])");
  expect_error(
      [&] {
        cache.decode_attention(0, plan,
                               Tensor::from_host(random_values(3 * kDim, 1), {1, 3, kDim}, DType::F32, GetParam()));
      },
      ErrorCode::Shape, "decode_attention: queries: qo_heads 3 must be a positive multiple of kv_heads 2");
  expect_error(
      [&] {
        cache.decode_attention(0, plan, Tensor::from_host(data(1, 1), {1, kHeads, kDim}, DType::BF16, GetParam()));
      },
      ErrorCode::Config, "decode_attention: queries are bf16, the pages f32");
  expect_error([&] { cache.decode_attention(0, plan, q, std::numeric_limits<float>::infinity()); }, ErrorCode::Config,
               "decode_attention: scale inf is not finite");
  EXPECT_NO_THROW(cache.decode_attention(0, plan, q));
}

TEST_P(PagedKvCacheTest, DecodeAttentionRejectsAHeadDimAboveTheKernelsLimit) {
  PagedKvConfig config = small_config(1, 1);
  config.kv_heads = 1;
  config.head_dim = kPagedAttentionMaxHeadDim + 1;
  PagedKvCache cache(config, GetParam());
  const SequenceId a = cache.add_sequence();
  const PagedStepPlan plan = step(cache, {a}, {0});
  const Tensor q =
      Tensor::from_host(random_values(config.head_dim, 1), {1, 1, config.head_dim}, DType::F32, GetParam());
  expect_error([&] { cache.decode_attention(0, plan, q); }, ErrorCode::Config,
               "decode_attention: head_dim 4097 is above 4096");
}

// ---- the strong guarantee under failing allocations ----

TEST_P(PagedKvCacheTest, FailedAllocationsInBeginStepAndForkChangeNothing) {
  // a (6 tokens) and its fork b share a partial page; c holds 4 tokens.
  const auto make_cache = [this] {
    PagedKvCache cache = make(4, 8);
    const SequenceId a = cache.add_sequence(), c = cache.add_sequence();
    write_all(cache, step(cache, {a, c}, {6, 4}), data(10, 5));
    cache.fork(a);
    return cache;
  };
  const SequenceId a{0}, c{1}, b{2};
  const auto observed = [&](const PagedKvCache& cache) { return state(cache, {a, b, c}); };
  EXPECT_EQ(sweep<PagedKvCache>(
                GetParam(), make_cache,
                [&](PagedKvCache& cache) {
                  step(cache, {b, c, a}, {1, 4, 2});
                },
                observed),
            1u);  // the plan's one buffer; copy on write takes pool pages
  EXPECT_EQ(sweep<PagedKvCache>(
                GetParam(), make_cache, [&](PagedKvCache& cache) { cache.fork(c); }, observed),
            0u);  // a fork allocates no device memory
}

TEST_P(PagedKvCacheTest, FailedConstructionLeaksNothing) {
  Backend& backend = backend_for(GetParam());
  const std::size_t in_use = backend.memory_stats().in_use;
  for (std::size_t n = 1; n <= 3; ++n) {  // one page tensor per layer, then the page tables
    backend.fail_allocation_after(n);
    EXPECT_THROW(make(4, 8), Error);
    backend.fail_allocation_after(0);
    EXPECT_EQ(backend.memory_stats().in_use, in_use);
  }
  backend.fail_allocation_after(4);
  EXPECT_NO_THROW(make(4, 8));
  backend.fail_allocation_after(0);
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedKvCacheTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
