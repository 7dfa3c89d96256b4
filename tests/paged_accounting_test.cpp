// PagedKvCache's device page tables and accounting kernel on every backend:
// after every kind of operation the resident block table holds each
// sequence's pages and device_accounting equals the host's counters; the
// limits of the tables (max_sequences, max_sequence_len) and their bytes.
#include <functional>
#include <numeric>

#include "paged_support.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

TEST(PagedKvConfig, PageTablesHaveARowOfPageIdsAndALengthPerSequence) {
  PagedKvConfig c = small_config(4, 8);
  EXPECT_EQ(c.sequence_len(), 32u);  // every slot of the pool
  EXPECT_EQ(c.row_capacity(), 8u);
  EXPECT_EQ(c.table_bytes(), 1024u * 9 * 4);
  c.max_sequences = 3;
  c.max_sequence_len = 9;
  EXPECT_EQ(c.row_capacity(), 3u);
  EXPECT_EQ(c.table_bytes(), 3u * 4 * 4);
  c = small_config(16, 1 << 20);
  EXPECT_EQ(c.sequence_len(), PagedKvConfig::kDefaultMaxSequenceLen);
}

TEST(PagedKvConfig, TableLimitsAreConfigErrors) {
  PagedKvConfig c = small_config(4, 8);
  c.max_sequences = 0;
  expect_error([&] { c.validate(); }, ErrorCode::Config,
               "PagedKvConfig.max_sequences must be in 1..=2147483647, got 0");
  c = small_config(4, 8);
  c.max_sequence_len = std::size_t{1} << 31;
  expect_error([&] { c.validate(); }, ErrorCode::Config,
               "PagedKvConfig.max_sequence_len must be <= 2147483647 (lengths are int32), got 2147483648");
}

class PagedAccountingTest : public PagedCacheFixture {
 protected:
  // Checks the device's tables and accounting against the host, for every live sequence in `ids`.
  static void expect_device_agrees(const PagedKvCache& cache, const std::vector<SequenceId>& ids) {
    const std::vector<std::int32_t> table = cache.block_table().to_host_i32();
    const std::size_t columns = cache.config().row_capacity();
    for (const SequenceId id : ids) {
      const std::vector<std::int32_t> pages = cache.pages_of(id);
      const std::size_t row = cache.row_of(id);
      EXPECT_EQ(std::vector<std::int32_t>(table.begin() + static_cast<std::ptrdiff_t>(row * columns),
                                          table.begin() + static_cast<std::ptrdiff_t>(row * columns + pages.size())),
                pages)
          << "row " << row;
    }
    const PagedDeviceAccounting device = cache.device_accounting(ids);
    ASSERT_EQ(device.per_sequence.shape(), (Shape{ids.size(), 4}));
    const std::vector<std::int64_t> per = device.per_sequence.to_host_i64();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const PagedSequenceStats s = cache.sequence_stats(ids[i]);
      const std::vector<std::int64_t> expected{static_cast<std::int64_t>(s.tokens), static_cast<std::int64_t>(s.pages),
                                               static_cast<std::int64_t>(s.bytes), static_cast<std::int64_t>(s.slack)};
      EXPECT_EQ(std::vector<std::int64_t>(per.begin() + static_cast<std::ptrdiff_t>(4 * i),
                                          per.begin() + static_cast<std::ptrdiff_t>(4 * i + 4)),
                expected)
          << "sequence " << static_cast<std::uint64_t>(ids[i]);
    }
    const PagedPoolStats p = cache.pool_stats();
    EXPECT_EQ(
        device.pool.to_host_i64(),
        (std::vector<std::int64_t>{static_cast<std::int64_t>(p.pages_used), static_cast<std::int64_t>(p.pages_shared),
                                   static_cast<std::int64_t>(p.tokens), static_cast<std::int64_t>(p.bytes_used)}));
  }

  static std::vector<std::int32_t> prompt(std::size_t tokens) {
    std::vector<std::int32_t> ids(tokens);
    std::iota(ids.begin(), ids.end(), 100);
    return ids;
  }
};

TEST_P(PagedAccountingTest, DeviceAgreesWithTheHostAfterEveryKindOfOperation) {
  PagedKvCache cache = make(4, 16);
  std::vector<SequenceId> live;
  const auto check = [&](const char* after) {
    SCOPED_TRACE(after);
    expect_device_agrees(cache, live);
  };
  check("construction");
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  live = {a, b};
  check("add_sequence");
  const std::vector<std::int32_t> ids = prompt(10);
  const std::vector<SequenceId> ab{a, b};
  const std::vector<std::size_t> counts{10, 3};
  std::vector<std::int32_t> tokens = ids;
  tokens.insert(tokens.end(), {7, 8, 9});
  write_all(cache, cache.begin_step(ab, counts, tokens), data(13, 1));
  check("a step naming pages");
  const PrefixHit hit = cache.add_sequence(prompt(12));
  live.push_back(hit.id);
  check("a prefix hit");
  const SequenceId c = cache.fork(a);
  live.push_back(c);
  check("fork");
  step(cache, {c, b}, {1, 0});
  check("copy on write");
  step(cache, {a, c, b, hit.id}, {5, 4, 2, 4});
  check("a step of every sequence");
  cache.release(b);
  live.erase(live.begin() + 1);
  check("release");
  EXPECT_TRUE(cache.trim_to(a, 9));
  check("trim_to inside a page");
  EXPECT_TRUE(cache.trim_to(c, 8));
  check("trim_to a page boundary");
  EXPECT_TRUE(cache.evict_to_window(hit.id, 2, 5));
  check("evict_to_window");
  std::vector<float> scores(cache.length(a));
  std::iota(scores.begin(), scores.end(), 0.0f);
  EXPECT_TRUE(cache.evict_heavy_hitters(a, Tensor::from_host(scores, {scores.size()}, DType::F32, GetParam()), 2, 3));
  check("evict_heavy_hitters");
  cache.release(hit.id);
  live.erase(live.begin() + 1);
  check("a release into the prefix cache");
  const SequenceId d = cache.add_sequence();
  live.push_back(d);
  step(cache, {d}, {cache.pool_stats().pages_free * 4 + 4});
  check("a step evicting a cached page");
}

TEST_P(PagedAccountingTest, AnEmptyPoolAndAnEmptyBatchCountNothing) {
  PagedKvCache cache = make(4, 8);
  const PagedDeviceAccounting device = cache.device_accounting({});
  EXPECT_EQ(device.per_sequence.shape(), (Shape{0, 4}));
  EXPECT_EQ(device.pool.to_host_i64(), (std::vector<std::int64_t>{0, 0, 0, 0}));
}

TEST_P(PagedAccountingTest, AStepsBufferIsItsMetadataThenTheFewInputsThatCrossFromTheHost) {
  PagedKvCache cache = make(4, 96);
  std::vector<SequenceId> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(cache.add_sequence());
  step(cache, ids, std::vector<std::size_t>(8, 30));  // 8 pages each
  Backend& backend = backend_for(GetParam());
  const std::size_t before = backend.memory_stats().in_use;
  const PagedStepPlan plan = step(cache, ids, std::vector<std::size_t>(8, 3));  // 1 new page each
  EXPECT_EQ(plan.kv_indices.numel(), 72u);
  // Outputs, each array 16-byte aligned: slot_mapping 192, kv_indptr 36,
  // kv_indices 288, kv_last_page_len 32, qo_indptr 36: 608 bytes. Inputs, the
  // only bytes sent: rows, lengths, counts 32 each, update_indptr 36, the 8
  // new pages' columns and ids 32 each: 208 bytes, against the 600 bytes of
  // metadata a host-built plan would send.
  EXPECT_EQ(backend.memory_stats().in_use - before, 608u + 208);
  const auto* base = static_cast<const std::byte*>(plan.slot_mapping.data());
  EXPECT_EQ(static_cast<const std::byte*>(plan.qo_indptr.data()) - base, 560);
}

TEST_P(PagedAccountingTest, TheTablesHoldAtMostMaxSequencesSequences) {
  PagedKvConfig config = small_config(4, 8);
  config.max_sequences = 2;
  PagedKvCache cache(config, GetParam());
  const SequenceId a = cache.add_sequence();
  cache.add_sequence();
  expect_error([&] { cache.add_sequence(); }, ErrorCode::OutOfMemory,
               "add_sequence: 2 sequences alive, the most the page tables hold (max_sequences)");
  expect_error([&] { cache.fork(a); }, ErrorCode::OutOfMemory,
               "fork: 2 sequences alive, the most the page tables hold (max_sequences)");
  EXPECT_EQ(cache.num_sequences(), 2u);
  cache.release(a);
  const SequenceId c = cache.add_sequence();
  EXPECT_EQ(cache.row_of(c), 0u);  // the released row is handed out again
}

TEST_P(PagedAccountingTest, ASequenceHoldsAtMostMaxSequenceLenTokens) {
  PagedKvConfig config = small_config(4, 8);
  config.max_sequence_len = 6;  // a row of 2 pages
  PagedKvCache cache(config, GetParam());
  const SequenceId a = cache.add_sequence();
  EXPECT_NO_THROW(step(cache, {a}, {6}));
  expect_error([&] { step(cache, {a}, {1}); }, ErrorCode::Config,
               "begin_step: sequence 0 of 6 tokens cannot grow by 1: at most 6 tokens (max_sequence_len)");
  EXPECT_EQ(cache.length(a), 6u);
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedAccountingTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
