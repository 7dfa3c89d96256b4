// PagedKvCache's file and restore hook on every backend: a loaded cache continues exactly as the saved one
// (the same pages handed out, copies on write, evictions, prefix hits, metadata, gathers, accounting,
// attention and counters), every dtype and layout, only used and cached pages stored, and the exact errors of
// a state or file that does not fit.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "file_support.hpp"
#include "paged_support.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

std::vector<std::int32_t> tokens(std::int32_t first, std::size_t count) {
  std::vector<std::int32_t> out(count);
  std::iota(out.begin(), out.end(), first);
  return out;
}

// Copies safetensors file `from` to `to` (I64 tensors too), letting `edit` change I64 tensor `name` (a list
// may change its length) and setting metadata `key` to `value` when a key is given.
void copy_editing(const std::string& from, const std::string& to, const std::string& name,
                  const std::function<void(std::vector<std::int64_t>&)>& edit, const std::string& key = "",
                  const std::string& value = "") {
  const SafetensorsReader source(from);
  SafetensorsWriter copy;
  for (const std::string& n : source.names()) {
    const SafetensorsEntry& entry = source.entry(n);
    if (entry.dtype != "I64") {
      copy.add(n, source.read(n));
      continue;
    }
    std::vector<std::int64_t> values = source.read_i64(n);
    if (n == name) edit(values);
    copy.add_i64(n, values, entry.shape.size() == 1 ? Shape{values.size()} : Shape(entry.shape));
  }
  for (const auto& [k, v] : source.metadata()) copy.set_metadata(k, v);
  if (!key.empty()) copy.set_metadata(key, value);
  copy.write(to);
}

class PagedKvFileTest : public PagedCacheFixture {
 protected:
  // The sequences of history(): a and its fork b share a partly filled page; c took a's two named pages as a
  // prefix; d's two named pages were released into the prefix cache; e was evicted to sinks and a window; f's
  // five named pages took the last free pages and evicted one cached page.
  struct History {
    SequenceId a{}, b{}, c{}, e{}, f{};
  };

  void run(PagedKvCache& cache, std::vector<SequenceId> ids, std::vector<std::size_t> counts,
           const std::vector<std::int32_t>& token_ids, std::uint32_t seed) const {
    const PagedStepPlan plan = cache.begin_step(ids, counts, token_ids);
    write_all(cache, plan, data(plan.total_new, seed));
  }

  History history(PagedKvCache& cache) const {
    History h;
    h.a = cache.add_sequence();
    run(cache, {h.a}, {10}, tokens(0, 10), 1);
    h.b = cache.fork(h.a);
    const std::vector<std::int32_t> prompt = tokens(0, 10);
    h.c = cache.add_sequence(prompt).id;  // a's two full pages
    run(cache, {h.c}, {2}, tokens(8, 2), 2);
    const SequenceId d = cache.add_sequence();
    run(cache, {d}, {8}, tokens(100, 8), 3);
    cache.release(d);  // two named pages into the prefix cache
    h.e = cache.add_sequence();
    run(cache, {h.e}, {9}, {}, 4);
    cache.evict_to_window(h.e, 2, 3);  // positions 0, 1, 6, 7, 8
    h.f = cache.add_sequence();
    run(cache, {h.f}, {20}, tokens(200, 20), 5);  // four free pages, then one cached: an eviction
    return h;
  }

  // The same operations on either cache: f's pages back to the prefix cache, a prompt taking four of them,
  // a step that copies b's shared page on write and evicts the two oldest cached pages, its writes; then everything a
  // caller observes, as numbers.
  std::vector<double> continue_and_observe(PagedKvCache& cache, const History& h) const {
    cache.release(h.f);
    const std::vector<std::int32_t> prompt = tokens(200, 17);
    const PrefixHit hit = cache.add_sequence(prompt);
    const std::vector<SequenceId> ids{h.b, hit.id, h.e};
    const PagedStepPlan plan = cache.begin_step(ids, std::vector<std::size_t>{2, 1, 2}, tokens(300, 5));
    write_all(cache, plan, data(plan.total_new, 6));
    std::vector<double> out{static_cast<double>(hit.cached_tokens), static_cast<double>(plan.batch),
                            static_cast<double>(plan.total_new)};
    const auto append = [&](const auto& values) { out.insert(out.end(), values.begin(), values.end()); };
    append(plan.slot_mapping.to_host_i64());
    for (const Tensor& t : {plan.kv_indptr, plan.kv_indices, plan.kv_last_page_len, plan.qo_indptr}) {
      append(t.to_host_i32());
    }
    const std::vector<SequenceId> all{h.a, h.b, h.c, h.e, hit.id};
    append(state(cache, all));
    for (const SequenceId id : all) out.push_back(static_cast<double>(cache.row_of(id)));
    const PagedDeviceAccounting accounting = cache.device_accounting(all);
    append(accounting.per_sequence.to_host_i64());
    append(accounting.pool.to_host_i64());
    for (std::size_t l = 0; l < 2; ++l) {
      append(
          cache.decode_attention(l, plan, tensor(data(plan.batch, 7 + static_cast<std::uint32_t>(l)))).to_host_f32());
    }
    const PagedPoolStats s = cache.pool_stats();
    append(std::vector<std::size_t>{s.pages_total, s.pages_used, s.pages_cached, s.pages_free, s.pages_shared, s.tokens,
                                    s.bytes_used, s.bytes_cached, cache.memory_usage()});
    const PrefixCacheStats p = cache.prefix_stats();
    append(std::vector<std::uint64_t>{p.lookup_tokens, p.hit_tokens, p.hit_pages, p.evictions, p.named_pages});
    out.push_back(static_cast<double>(static_cast<std::uint64_t>(cache.add_sequence())));
    return out;
  }

  std::string saved(const PagedKvCache& cache, const std::string& name) const {
    const std::string path = dir_.path(name);
    cache.save(path);
    return path;
  }

  ScratchDir dir_;
};

TEST_P(PagedKvFileTest, LoadedCacheHasTheSavedStateAndConfig) {
  PagedKvCache cache = make(4, 12);
  history(cache);
  const PagedKvCache loaded = PagedKvCache::load(saved(cache, "paged.safetensors"), GetParam());
  EXPECT_EQ(loaded.state(), cache.state());
  EXPECT_EQ(loaded.config().num_pages, 12u);
  EXPECT_EQ(loaded.config().max_bytes, 0u);
  EXPECT_EQ(loaded.config().max_sequences, cache.config().max_sequences);
  EXPECT_EQ(loaded.device(), GetParam());
  EXPECT_EQ(loaded.memory_reserved(), cache.memory_reserved());
}

TEST_P(PagedKvFileTest, LoadedCacheContinuesExactlyAsTheSavedOne) {
  PagedKvCache cache = make(4, 12);
  const History h = history(cache);
  PagedKvCache loaded = PagedKvCache::load(saved(cache, "paged.safetensors"), GetParam());
  const std::vector<double> expected = continue_and_observe(cache, h);
  const std::vector<double> actual = continue_and_observe(loaded, h);
  EXPECT_EQ(actual, expected);
  EXPECT_EQ(actual.front(), 16.0);                              // the prompt found four of f's cached pages
  EXPECT_NE(loaded.pages_of(h.b)[2], loaded.pages_of(h.a)[2]);  // b's shared last page was copied on write
  EXPECT_EQ(loaded.prefix_stats().evictions, 3u);               // one in the history, two in the step
  EXPECT_EQ(loaded.pool_stats().pages_free, 0u);
}

TEST_P(PagedKvFileTest, RestoreFromStateAndStoredPagesContinuesExactly) {
  PagedKvCache cache = make(4, 12);
  const History h = history(cache);
  const PagedKvState s = cache.state();
  const std::vector<std::int32_t> stored = s.stored_pages();
  std::vector<Tensor> pages;
  for (std::size_t l = 0; l < 2; ++l) {
    std::vector<std::byte> bytes;
    for (const std::int32_t p : stored) {
      const std::vector<std::byte> page = cache.pages(l).narrow(static_cast<std::size_t>(p), 1).to_host_bytes();
      bytes.insert(bytes.end(), page.begin(), page.end());
    }
    std::vector<std::size_t> dims = cache.pages(l).dims();
    dims[0] = stored.size();
    pages.push_back(Tensor::from_host_bytes(bytes, Shape(dims), DType::F32, GetParam()));
  }
  PagedKvCache restored = PagedKvCache::restore(cache.config(), s, pages, GetParam());
  EXPECT_EQ(continue_and_observe(restored, h), continue_and_observe(cache, h));
}

TEST_P(PagedKvFileTest, FileHoldsOnlyTheUsedAndCachedPages) {
  PagedKvCache cache = make(4, 12);
  history(cache);
  const SafetensorsReader file(saved(cache, "paged.safetensors"));
  EXPECT_EQ(*file.metadata("micache.cache"), "PagedKvCache");
  EXPECT_EQ(*file.metadata("micache.paged_format"), "micache-paged/2");
  const std::size_t stored = cache.pool_stats().pages_used + cache.pool_stats().pages_cached;
  EXPECT_EQ(stored, 12u);
  for (const char* name : {"blocks.0.attn.kv_pages", "blocks.1.attn.kv_pages"}) {
    EXPECT_EQ(file.entry(name).shape, (std::vector<std::size_t>{stored, 2, 4, kHeads, kDim}));
  }
  PagedKvCache fresh = make(4, 12);
  const SequenceId id = sequence(fresh, 5);
  const SafetensorsReader small(saved(fresh, "small.safetensors"));
  EXPECT_EQ(small.entry("blocks.0.attn.kv_pages").shape, (std::vector<std::size_t>{2, 2, 4, kHeads, kDim}));
  EXPECT_EQ(small.read_i64("sequences.ids"), (std::vector<std::int64_t>{static_cast<std::int64_t>(id)}));
}

TEST_P(PagedKvFileTest, EmptyCacheRoundTrips) {
  const PagedKvCache cache = make(4, 3);
  PagedKvCache loaded = PagedKvCache::load(saved(cache, "empty.safetensors"), GetParam());
  EXPECT_EQ(loaded.state(), cache.state());
  const SequenceId id = sequence(loaded, 12);
  EXPECT_EQ(loaded.pages_of(id), (std::vector<std::int32_t>{0, 1, 2}));
}

TEST_P(PagedKvFileTest, EveryDTypeAndLayoutRoundTripsBitForBit) {
  for (const DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    for (const PagedLayout layout : {PagedLayout::Nhd, PagedLayout::Hnd}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + (layout == PagedLayout::Nhd ? " nhd" : " hnd"));
      PagedKvCache cache = make(4, 6, layout, dtype);
      const SequenceId a = cache.add_sequence();
      const PagedStepPlan plan = cache.begin_step(std::vector<SequenceId>{a}, std::vector<std::size_t>{7});
      write_all(cache, plan, data(7, 11), dtype);
      const SequenceId b = cache.fork(a);
      PagedKvCache loaded = PagedKvCache::load(saved(cache, "dtype.safetensors"), GetParam());
      EXPECT_EQ(loaded.config().dtype, dtype);
      EXPECT_EQ(loaded.config().layout, layout);
      EXPECT_EQ(loaded.pages(1).shape(), cache.pages(1).shape());
      for (std::size_t l = 0; l < 2; ++l) {
        for (const SequenceId id : {a, b}) {
          EXPECT_EQ(loaded.gather(id, l).keys.to_host_bytes(), cache.gather(id, l).keys.to_host_bytes());
          EXPECT_EQ(loaded.gather(id, l).values.to_host_bytes(), cache.gather(id, l).values.to_host_bytes());
        }
      }
      for (PagedKvCache* c : {&cache, &loaded}) {  // a copy on write in both
        const PagedStepPlan next = c->begin_step(std::vector<SequenceId>{b}, std::vector<std::size_t>{1});
        write_all(*c, next, data(1, 12), dtype);
      }
      EXPECT_EQ(loaded.pages_of(b), cache.pages_of(b));
      EXPECT_EQ(loaded.gather(b, 1).keys.to_host_bytes(), cache.gather(b, 1).keys.to_host_bytes());
    }
  }
}

TEST_P(PagedKvFileTest, TruncatedFileIsAnIoError) {
  PagedKvCache cache = make(4, 12);
  history(cache);
  const std::string path = saved(cache, "paged.safetensors");
  const SafetensorsEntry last = SafetensorsReader(path).entry("sequences.runs");
  std::vector<char> bytes = read_file(path);
  bytes.resize(bytes.size() - 8);
  write_file(dir_.path("short.safetensors"), bytes);
  expect_error([&] { PagedKvCache::load(dir_.path("short.safetensors"), GetParam()); }, ErrorCode::Io,
               dir_.path("short.safetensors") + ": tensor 'sequences.runs': offsets [" + std::to_string(last.begin) +
                   ", " + std::to_string(last.end) + "] out of range (data holds " + std::to_string(last.end - 8) +
                   " bytes)");
}

TEST_P(PagedKvFileTest, WrongReferenceCountIsAnIoErrorNamingThePage) {
  PagedKvCache cache = make(4, 12);
  history(cache);
  const std::string bad = dir_.path("refs.safetensors");
  copy_editing(saved(cache, "paged.safetensors"), bad, "pool.references", [](auto& refs) { refs[2] = 3; });
  expect_error([&] { PagedKvCache::load(bad, GetParam()); }, ErrorCode::Io,
               bad + ": restore: page 2 has reference count 3, held by 2 sequences");
}

TEST_P(PagedKvFileTest, PageListedTwiceIsAnIoError) {
  PagedKvCache cache = make(4, 12);
  history(cache);
  const std::string bad = dir_.path("twice.safetensors");
  copy_editing(saved(cache, "paged.safetensors"), bad, "pool.cached_pages",
               [](auto& cached) { cached.push_back(cached[0]); });
  expect_error([&] { PagedKvCache::load(bad, GetParam()); }, ErrorCode::Io,
               bad + ": restore: page 4 is listed twice among the free and cached pages");
  copy_editing(saved(cache, "paged.safetensors"), bad, "pool.cached_pages", [](auto& cached) { cached[0] = 0; });
  expect_error([&] { PagedKvCache::load(bad, GetParam()); }, ErrorCode::Io,
               bad + ": restore: cached page 0 has reference count 3");
  copy_editing(saved(cache, "paged.safetensors"), bad, "sequences.pages", [](auto& pages) { pages[1] = pages[0]; });
  expect_error([&] { PagedKvCache::load(bad, GetParam()); }, ErrorCode::Io,
               bad + ": restore: sequence 0 holds page 0 twice");
}

TEST_P(PagedKvFileTest, OtherFormatVersionOrClassIsAnIoError) {
  const PagedKvCache cache = make(4, 3);
  const std::string path = saved(cache, "paged.safetensors");
  copy_editing(path, dir_.path("v0.safetensors"), "", {}, "micache.paged_format", "micache-paged/0");
  expect_error([&] { PagedKvCache::load(dir_.path("v0.safetensors"), GetParam()); }, ErrorCode::Io,
               dir_.path("v0.safetensors") + ": paged format 'micache-paged/0', this build reads 'micache-paged/2'");
  KVCache kv(1);
  kv.save(dir_.path("kv.safetensors"));
  expect_error([&] { PagedKvCache::load(dir_.path("kv.safetensors"), GetParam()); }, ErrorCode::Io,
               dir_.path("kv.safetensors") + ": saved by KVCache, not by PagedKvCache");
}

TEST_P(PagedKvFileTest, RestoreValidatesTheStateBeforeAllocating) {
  PagedKvCache cache = make(4, 12);
  history(cache);
  const PagedKvState good = cache.state();
  const std::vector<Tensor> none;
  const auto expect_rejected = [&](const std::function<void(PagedKvState&)>& edit, const std::string& message) {
    PagedKvState s = good;
    edit(s);
    expect_error([&] { PagedKvCache::restore(cache.config(), s, none, GetParam()); }, ErrorCode::Config,
                 "restore: " + message);
  };
  expect_rejected([](PagedKvState& s) { s.references.pop_back(); }, "11 reference counts for 12 pages");
  expect_rejected([](PagedKvState& s) { s.free_pages.push_back(12); }, "free page 12 out of range (pages=12)");
  expect_rejected([](PagedKvState& s) { s.names.push_back(s.names.front()); }, "page 0 is named twice");
  expect_rejected(
      [](PagedKvState& s) {
        s.names[1].low = s.names[0].low;
        s.names[1].high = s.names[0].high;
      },
      "pages 0 and 1 have the same name");
  expect_rejected(
      [](PagedKvState& s) {
        s.references[4] = 0;
        s.cached_pages.clear();
      },
      "page 4 has reference count 0 and is neither free nor cached");
  expect_rejected([](PagedKvState& s) { s.sequences[1].row = s.sequences[0].row; },
                  "row " + std::to_string(good.sequences[0].row) + " is held twice");
  expect_rejected([](PagedKvState& s) { s.sequences[0].length = 13; },
                  "sequence 0 of 13 tokens holds 3 pages, must hold 4");
  expect_rejected([](PagedKvState& s) { s.sequences[0].id = 9; },
                  "sequence ids must increase and stay below next_id 6; entry 0 is 9");
  expect_rejected([](PagedKvState& s) { s.sequences[3].positions[1].begin = 2; },
                  "sequence 4's position runs must be non-empty, increase with gaps between them and stay below "
                  "next_position 9; run 1 is (begin 2, length 3)");
  expect_rejected([](PagedKvState& s) { s.sequences[0].tail_tokens.push_back(1); },
                  "sequence 0 names its pages and has 3 tail tokens for the 2 tokens of its last page");
  expect_rejected([](PagedKvState& s) { s.free_rows.pop_back(); },
                  "5 sequences and " + std::to_string(good.free_rows.size() - 1) + " free rows for max_sequences 1024");
}

TEST_P(PagedKvFileTest, RestoreRejectsStoredPagesThatDoNotFit) {
  PagedKvCache cache = make(4, 3);
  const SequenceId id = sequence(cache, 5);
  static_cast<void>(id);
  const PagedKvState s = cache.state();
  expect_error([&] { PagedKvCache::restore(cache.config(), s, std::vector<Tensor>{}, GetParam()); }, ErrorCode::Shape,
               "restore: 0 stored page tensors for 2 storage tensors");
  const Tensor wrong = Tensor::empty({3, 2, 4, kHeads, kDim}, DType::F32, GetParam());
  expect_error(
      [&] {
        PagedKvCache::restore(cache.config(), s, std::vector<Tensor>{wrong, wrong}, GetParam());
      },
      ErrorCode::Shape, "restore: stored pages of storage tensor 0 are [3, 2, 4, 2, 4], must be [2, 2, 4, 2, 4]");
  const Tensor half = Tensor::empty({2, 2, 4, kHeads, kDim}, DType::F16, GetParam());
  expect_error(
      [&] {
        PagedKvCache::restore(cache.config(), s, std::vector<Tensor>{half, half}, GetParam());
      },
      ErrorCode::Config, "restore: stored pages of storage tensor 0 are f16, the config's dtype f32");
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedKvFileTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
