// The README's table of bad inputs, as a test: every row is a call made here
// with what the user gets, and the README must hold each row exactly as this
// test prints it (run with --gtest_filter=BadInput.* to see the rows).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "file_support.hpp"
#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Row {
  std::string input;    // the bad input, in words
  std::string call;     // the call that receives it
  std::string outcome;  // what the user gets: "Code: message" or the result
  std::function<std::string()> run;
};

// "Code: message" for an Error, or the text `run` returns.
std::string outcome_of(const std::function<std::string()>& run) {
  try {
    return run();
  } catch (const Error& e) {
    return std::string(to_string(e.code())) + ": " + e.what();
  }
}

Tensor f32(std::vector<std::size_t> dims, float value = 0.25f) {
  const Shape shape(std::move(dims));
  return Tensor::from_host(std::vector<float>(shape.numel(), value), shape, DType::F32);
}

AttentionCache attention() {
  AttentionCache cache = AttentionCache::with_capacity(1);
  cache.push(f32({1, 2, 4, 4}));
  return cache;
}

KVCache kv_cache() {
  KVCache cache(2);
  cache.append(0, f32({1, 2, 3, 4}), f32({1, 2, 3, 4}));
  cache.append(1, f32({1, 2, 3, 4}), f32({1, 2, 3, 4}));
  return cache;
}

// Two pages of 4 tokens, one layer of 2 kv heads of 4 f32.
PagedKvCache paged_pool() {
  return PagedKvCache({.n_layers = 1, .kv_heads = 2, .head_dim = 4, .page_size = 4, .num_pages = 2, .dtype = DType::F32});
}

// A step of `tokens` new tokens of one new sequence.
PagedStepPlan paged_step(PagedKvCache& pool, std::size_t tokens) {
  const std::vector<SequenceId> ids{pool.add_sequence()};
  const std::vector<std::size_t> counts{tokens};
  return pool.begin_step(ids, counts);
}

KvCacheConfig config(std::size_t head_dim = 4, unsigned bits = 4, std::size_t projections = 4) {
  return {.head_dim = head_dim, .bits = bits, .projections = projections};
}

std::string ok(const std::string& what) { return "returns " + what; }

// What loading the file `make` writes gives, with the file's path shown as FILE.
std::string load_outcome(const std::function<void(const std::string&)>& make,
                         const std::function<void(const std::string&)>& load) {
  const std::string path = (std::filesystem::temp_directory_path() / "micache_bad_input.safetensors").string();
  make(path);
  std::string outcome = outcome_of([&] {
    load(path);
    return ok("a cache");
  });
  std::filesystem::remove(path);
  for (std::size_t at = outcome.find(path); at != std::string::npos; at = outcome.find(path)) {
    outcome.replace(at, path.size(), "FILE");
  }
  return outcome;
}

std::vector<Row> rows() {
  using V = std::vector<std::vector<float>>;
  return {
      {"pattern of rank 3", "`AttentionCache::push`",
       "Shape: pattern must be [batch, heads, seq_q, seq_k], got rank 3 [2, 2, 2]",
       [] { attention().push(f32({2, 2, 2})); return ok("nothing"); }},
      {"layer shapes differ", "`AttentionCache::push`", "Shape: layer 1 pattern [1, 2, 5, 5] differs from layer 0 [1, 2, 4, 4]",
       [] { attention().push(f32({1, 2, 5, 5})); return ok("nothing"); }},
      {"integer pattern", "`AttentionCache::push`", "Config: pattern dtype must be f32, f16 or bf16, got i32",
       [] { AttentionCache().push(Tensor::from_host_i32(std::vector<std::int32_t>(16, 0), {1, 1, 4, 4})); return ok("nothing"); }},
      {"position out of range", "`attention_from_position(0, 10)` on seq 4", "Hook: position 10 out of range (seq_q=4)",
       [] { attention().attention_from_position(0, 10); return ok("a row"); }},
      {"layer out of range", "`attention_from_position(3, 0)` on 1 layer", "Hook: layer 3 not in attention cache",
       [] { attention().attention_from_position(3, 0); return ok("a row"); }},
      {"empty cache", "`attention_from_position(0, 0)`", "Hook: layer 0 not in attention cache",
       [] { AttentionCache().attention_from_position(0, 0); return ok("a row"); }},
      {"head out of range", "`attention_from_position(0, 3, {.heads = {2}})` on 2 heads",
       "Hook: head 2 out of range (heads=2)",
       [] { attention().attention_from_position(0, 3, {.batch = 0, .heads = {2}}); return ok("a row"); }},
      {"head selected twice", "`attention_from_position(0, 3, {.heads = {1, 1}})`", "Config: head 1 selected twice",
       [] { attention().attention_from_position(0, 3, {.batch = 0, .heads = {1, 1}}); return ok("a row"); }},
      {"batch out of range", "`attention_from_position(0, 3, {.batch = 1})`", "Hook: batch 1 out of range (batch=1)",
       [] { attention().attention_from_position(0, 3, {.batch = 1, .heads = {}}); return ok("a row"); }},
      {"k = 0", "`top_attended_positions(0, 3, 0)`", "returns an empty list (as candle-mi)",
       [] { return attention().top_attended_positions(0, 3, 0).empty() ? ok("an empty list (as candle-mi)") : "?"; }},
      {"k = 0", "`top_attended_all(0, 0)`", "Config: k must be at least 1 for a device top-k result",
       [] { attention().top_attended_all(0, 0); return ok("a TopK"); }},
      {"k > seq_k", "`top_attended_positions(0, 3, 9)` on seq_k 4", "returns all 4 keys, ranked",
       [] { return ok("all " + std::to_string(attention().top_attended_positions(0, 3, 9).size()) + " keys, ranked"); }},
      {"NaN weight in one head", "`attention_from_position`", "returns NaN at that key, numbers elsewhere (no error)",
       [] {
         AttentionCache cache = AttentionCache::with_capacity(1);
         cache.push(Tensor::from_host(std::vector<float>{kNaN, 0.5f, 0.5f, 0.5f}, {1, 2, 1, 2}, DType::F32));
         const std::vector<float> row = cache.attention_from_position(0, 0);
         return std::isnan(row[0]) && row[1] == 0.5f ? ok("NaN at that key, numbers elsewhere (no error)") : "?";
       }},
      {"NaN weights", "`top_attended_positions`", "returns NaN keys after every number (no error)",
       [] {
         AttentionCache cache = AttentionCache::with_capacity(1);
         cache.push(Tensor::from_host(std::vector<float>{kNaN, 0.1f, 0.9f, 0.0f}, {1, 1, 1, 4}, DType::F32));
         return cache.top_attended_positions(0, 0, 4).back().first == 0 ? ok("NaN keys after every number (no error)")
                                                                         : "?";
       }},
      {"layer out of range", "`KVCache::append(5, k, v)` on 2 layers", "Hook: layer 5 out of range for KV cache",
       [] { kv_cache().append(5, f32({1, 2, 1, 4}), f32({1, 2, 1, 4})); return ok("nothing"); }},
      {"wrong head count", "`KVCache::append` of [1, 3, 3, 4] to [1, 2, ·, 4]",
       "Shape: append: new keys [1, 3, 3, 4] do not extend layer 0 [1, 2, 3, 4]",
       [] { kv_cache().append(0, f32({1, 3, 3, 4}), f32({1, 3, 3, 4})); return ok("nothing"); }},
      {"keys and values differ", "`KVCache::append`", "Shape: append: keys [1, 2, 3, 4] and values [1, 2, 2, 4] differ in shape",
       [] { kv_cache().append(0, f32({1, 2, 3, 4}), f32({1, 2, 2, 4})); return ok("nothing"); }},
      {"other dtype", "`KVCache::append` of bf16 to f32", "Config: append: bf16 on cpu into layer 0 of f32 on cpu",
       [] {
         const Tensor k = f32({1, 2, 1, 4}).to_dtype(DType::BF16);
         kv_cache().append(0, k, k);
         return ok("nothing");
       }},
      {"layers of unequal length", "`KVCache::trim_to(1)`",
       "Shape: trim_to: layer 1 holds 1 tokens, the first populated layer 3; finish the step first",
       [] {
         KVCache cache(2);
         cache.append(0, f32({1, 2, 3, 4}), f32({1, 2, 3, 4}));
         cache.append(1, f32({1, 2, 1, 4}), f32({1, 2, 1, 4}));
         cache.trim_to(1);
         return ok("true");
       }},
      {"budget 0", "`enforce_memory_limit(0)`", "returns true, 2 of 3 tokens kept (one 3/4 trim, as candle-mi)",
       [] {
         KVCache cache = kv_cache();
         const bool trimmed = cache.enforce_memory_limit(0);
         return ok(std::string(trimmed ? "true" : "false") + ", " + std::to_string(cache.seq_len()) +
                   " of 3 tokens kept (one 3/4 trim, as candle-mi)");
       }},
      {"budget 0", "`enforce_memory_limit(0, UntilUnderBudget)`", "returns true, 0 tokens kept",
       [] {
         KVCache cache = kv_cache();
         const bool trimmed = cache.enforce_memory_limit(0, EvictionPolicy::UntilUnderBudget);
         return ok(std::string(trimmed ? "true" : "false") + ", " + std::to_string(cache.seq_len()) + " tokens kept");
       }},
      {"scores of the wrong length", "`evict_heavy_hitters` with [5] scores on 3 tokens",
       "Shape: evict_heavy_hitters: scores must be [3] or [2, 3], got [5]",
       [] { kv_cache().evict_heavy_hitters(f32({5}), 1, 1); return ok("true"); }},
      {"NaN or Inf keys", "`KVCache::append`", "stored as given; queries of them give NaN (no error)",
       [] {
         KVCache cache(1);
         cache.append(0, f32({1, 1, 1, 2}, kInf), f32({1, 1, 1, 2}, kNaN));
         return std::isnan(cache.values(0).to_host_f32()[0]) ? "stored as given; queries of them give NaN (no error)" : "?";
       }},
      {"page_size not a power of two", "`PagedKvConfig::validate` with page_size 12",
       "Config: PagedKvConfig.page_size must be a power of two in 1..=1073741824, got 12",
       [] {
         PagedKvConfig c{.n_layers = 1, .kv_heads = 1, .head_dim = 4, .page_size = 12, .num_pages = 4};
         c.validate();
         return ok("nothing");
       }},
      {"released sequence", "`PagedKvCache::begin_step` of a released id",
       "Hook: begin_step: unknown sequence 0 (never added, or released)",
       [] {
         PagedKvCache pool = paged_pool();
         const std::vector<SequenceId> ids{pool.add_sequence()};
         pool.release(ids[0]);
         pool.begin_step(ids, std::vector<std::size_t>{1});
         return ok("a plan");
       }},
      {"a step that does not fit", "`begin_step` of 5 tokens with 1 of 2 pages of 4 free",
       "OutOfMemory: begin_step: needs 2 pages (0 copied on write), 1 free and 0 cached of 2",
       [] {
         PagedKvCache pool = paged_pool();
         paged_step(pool, 4);
         paged_step(pool, 5);
         return ok("a plan");
       }},
      {"keys of the wrong token count", "`PagedKvCache::write` of 2 tokens for a step of 3",
       "Shape: write: keys [2, 2, 4] must be [3, 2, 4] ([total_new, kv_heads, head_dim])",
       [] {
         PagedKvCache pool = paged_pool();
         const PagedStepPlan plan = paged_step(pool, 3);
         pool.write(0, plan, f32({2, 2, 4}), f32({3, 2, 4}));
         return ok("nothing");
       }},
      {"a plan used after its step", "`PagedKvCache::write` with the plan of the step before",
       "Config: write: the plan is of step 1, the cache is at step 2",
       [] {
         PagedKvCache pool = paged_pool();
         const PagedStepPlan old = paged_step(pool, 1);
         paged_step(pool, 1);
         pool.write(0, old, f32({1, 2, 4}), f32({1, 2, 4}));
         return ok("nothing");
       }},
      {"a plan of another cache", "`PagedKvCache::write`", "Config: write: the plan is of another cache (or of none)",
       [] {
         PagedKvCache pool = paged_pool(), other = paged_pool();
         const PagedStepPlan plan = paged_step(other, 1);
         paged_step(pool, 1);
         pool.write(0, plan, f32({1, 2, 4}), f32({1, 2, 4}));
         return ok("nothing");
       }},
      {"a sequence listed twice", "`begin_step` of ids {0, 0}",
       "Config: begin_step: sequence 0 listed twice (entries 0 and 1)",
       [] {
         PagedKvCache pool = paged_pool();
         const SequenceId a = pool.add_sequence();
         pool.begin_step(std::vector<SequenceId>{a, a}, std::vector<std::size_t>{1, 1});
         return ok("a plan");
       }},
      {"token ids of the wrong count", "`begin_step` of 3 new tokens with 2 token ids",
       "Shape: begin_step: 2 token ids for 3 new tokens",
       [] {
         PagedKvCache pool = paged_pool();
         const std::vector<SequenceId> ids{pool.add_sequence()};
         pool.begin_step(ids, std::vector<std::size_t>{3}, std::vector<std::int32_t>{7, 8});
         return ok("a plan");
       }},
      {"every page-table row taken", "`add_sequence` with max_sequences 1 and one sequence alive",
       "OutOfMemory: add_sequence: 1 sequences alive, the most the page tables hold (max_sequences)",
       [] {
         PagedKvCache pool({.n_layers = 1, .kv_heads = 2, .head_dim = 4, .page_size = 4, .num_pages = 2,
                            .dtype = DType::F32, .max_sequences = 1});
         pool.add_sequence();
         pool.add_sequence();
         return ok("an id");
       }},
      {"a sequence longer than max_sequence_len", "`begin_step` of 5 tokens with max_sequence_len 4",
       "Config: begin_step: sequence 0 of 0 tokens cannot grow by 5: at most 4 tokens (max_sequence_len)",
       [] {
         PagedKvCache pool({.n_layers = 1, .kv_heads = 2, .head_dim = 4, .page_size = 4, .num_pages = 2,
                            .dtype = DType::F32, .max_sequence_len = 4});
         paged_step(pool, 5);
         return ok("a plan");
       }},
      {"no free page to compact into", "`PagedKvCache::trim_to(id, 3)` of 8 tokens filling both pages",
       "OutOfMemory: trim_to: sequence 0 needs 1 fresh pages to compact into, 0 free and 0 cached of 2",
       [] {
         PagedKvCache pool = paged_pool();
         paged_step(pool, 8);
         pool.trim_to(SequenceId{0}, 3);
         return ok("true");
       }},
      {"heavy-hitter scores of the wrong length", "`PagedKvCache::evict_heavy_hitters` with [5] scores on 8 tokens",
       "Shape: evict_heavy_hitters: scores must be [8], got [5]",
       [] {
         PagedKvCache pool = paged_pool();
         paged_step(pool, 8);
         pool.evict_heavy_hitters(SequenceId{0}, f32({5}), 1, 2);
         return ok("true");
       }},
      {"layer kinds for another layer count", "`PagedKvConfig::validate` with 1 layer kind for 2 layers",
       "Config: PagedKvConfig.layer_kinds has 1 entries for 2 layers",
       [] {
         PagedKvConfig c{.n_layers = 2, .kv_heads = 1, .head_dim = 4, .page_size = 4, .num_pages = 4};
         c.layer_kinds = {PagedLayerKind::sliding(8)};
         c.validate();
         return ok("nothing");
       }},
      {"an eviction that brings dropped tokens into a window",
       "`evict_to_window(id, 2, 4)` of 21 tokens when a window-8 layer dropped the first 12",
       "Config: evict_to_window: sequence 0: layers of window 8 dropped token 0, which would be in their window "
       "after it",
       [] {
         PagedKvConfig c{.n_layers = 2, .kv_heads = 1, .head_dim = 4, .page_size = 4, .num_pages = 16};
         c.layer_kinds = {PagedLayerKind::sliding(8), PagedLayerKind::full()};
         PagedKvCache pool(c);
         const std::vector<SequenceId> ids{pool.add_sequence()};
         pool.begin_step(ids, std::vector<std::size_t>{20});
         pool.begin_step(ids, std::vector<std::size_t>{1});
         pool.evict_to_window(ids[0], 2, 4);
         return ok("true");
       }},
      {"a latent of the wrong length", "`MlaKvCache(8, ...)::push_latent` of 6 values",
       "DimensionMismatch: dimension mismatch: quantizer expects 8, got 6 (latent)",
       [] {
         MlaKvCache mla(8, 4, 4, 42);
         mla.push_latent(std::vector<float>(6, 0.5f));
         return ok("nothing");
       }},
      {"a layer out of range", "`ModelKvCache::layer(2)` of 2 layers", "Hook: layer 2 out of range (num_layers=2)",
       [] {
         std::vector<LayerCache> layers;
         layers.emplace_back(LinearState{});
         layers.emplace_back(LinearState{});
         static_cast<void>(ModelKvCache(std::move(layers)).layer(2));
         return ok("a layer");
       }},
      {"zero heads", "`MultiHeadKvCache(0, config)`", "EmptyInput: empty input: num_heads must be > 0",
       [] { MultiHeadKvCache(0, config()); return ok("a cache"); }},
      {"head_dim 0", "`KvCacheConfig::validate`", "ZeroDimension: dimension must be > 0",
       [] { config(0).validate(); return ok("nothing"); }},
      {"odd head_dim", "`KvCacheConfig::validate`", "OddDimension: dimension must be even, got 7",
       [] { config(7).validate(); return ok("nothing"); }},
      {"bits 0", "`KvCacheConfig::validate`", "InvalidBitWidth: bit width must be 1..=16, got 0",
       [] { config(4, 0).validate(); return ok("nothing"); }},
      {"bits 17", "`KvCacheConfig::validate`", "InvalidBitWidth: bit width must be 1..=16, got 17",
       [] { config(4, 17).validate(); return ok("nothing"); }},
      {"bits 12", "`KvCacheConfig::validate`",
       "InvalidBitWidth: bit width 12 is valid in bitpolar but micache packs at most 8 bits per coordinate",
       [] { config(4, 12).validate(); return ok("nothing"); }},
      {"projections 0", "`KvCacheConfig::validate`", "ZeroProjections: projections must be > 0",
       [] { config(4, 4, 0).validate(); return ok("nothing"); }},
      {"kv heads do not divide query heads", "`GqaKvCache(3, 8, config)`",
       "DimensionMismatch: dimension mismatch: quantizer expects 3, got 2 (num_query_heads 8 is not a multiple of "
       "num_kv_heads 3)",
       [] { GqaKvCache(3, 8, config()); return ok("a cache"); }},
      {"one key too few", "`push_token` on 2 heads", "DimensionMismatch: dimension mismatch: quantizer expects 2, got 1 "
                                                     "(keys: one vector per head)",
       [] { MultiHeadKvCache(2, config()).push_token(V{{1, 2, 3, 4}}, V{{1, 2, 3, 4}, {1, 2, 3, 4}}); return ok("nothing"); }},
      {"a short vector", "`push_token`", "DimensionMismatch: dimension mismatch: quantizer expects 4, got 3 (keys of head 1)",
       [] {
         MultiHeadKvCache(2, config()).push_token(V{{1, 2, 3, 4}, {1, 2, 3}}, V{{1, 2, 3, 4}, {1, 2, 3, 4}});
         return ok("nothing");
       }},
      {"NaN in a key", "`push_token`",
       "NonFiniteInput: input contains non-finite values (NaN or Inf) at index 1 (keys of head 1)",
       [] {
         MultiHeadKvCache(2, config()).push_token(V{{1, 2, 3, 4}, {1, kNaN, 3, 4}}, V{{1, 2, 3, 4}, {1, 2, 3, 4}});
         return ok("nothing");
       }},
      {"Inf in a query", "`attention_scores`",
       "NonFiniteInput: input contains non-finite values (NaN or Inf) at index 2 (query of head 1)",
       [] {
         MultiHeadKvCache cache(2, config());
         cache.push_token(V{{1, 2, 3, 4}, {1, 2, 3, 4}}, V{{1, 2, 3, 4}, {1, 2, 3, 4}});
         cache.attention_scores(V{{1, 2, 3, 4}, {1, 2, kInf, 4}});
         return ok("scores");
       }},
      {"empty compressed cache", "`attention_output`", "EmptyInput: empty input: attention over an empty cache",
       [] { MultiHeadKvCache(2, config()).attention_output(V{{1, 2, 3, 4}, {1, 2, 3, 4}}); return ok("outputs"); }},
      {"truncated file", "`AttentionCache::load`",
       "Io: FILE: tensor 'blocks.0.attn.hook_pattern': offsets [0, 128] out of range (data holds 127 bytes)",
       [] {
         return load_outcome(
             [](const std::string& path) {
               attention().save(path);
               std::filesystem::resize_file(path, std::filesystem::file_size(path) - 1);
             },
             [](const std::string& path) { AttentionCache::load(path); });
       }},
      {"header length 2^63", "`AttentionCache::load`", "Io: FILE: header length 9223372036854775808 exceeds the "
                                                       "104857600-byte limit",
       [] {
         return load_outcome(
             [](const std::string& path) {
               std::ofstream(path, std::ios::binary) << std::string(7, '\0') << '\x80' << "{}";
             },
             [](const std::string& path) { AttentionCache::load(path); });
       }},
      {"file of another cache", "`AttentionCache::load`", "Io: FILE: saved by KVCache, not by AttentionCache",
       [] {
         return load_outcome([](const std::string& path) { kv_cache().save(path); },
                             [](const std::string& path) { AttentionCache::load(path); });
       }},
  };
}

std::string markdown(const Row& row) { return "| " + row.input + " | " + row.call + " | " + row.outcome + " |"; }

TEST(BadInput, EveryRowGivesWhatTheTableSays) {
  for (const Row& row : rows()) {
    EXPECT_EQ(outcome_of(row.run), row.outcome) << row.input << ", " << row.call;
  }
}

TEST(BadInput, TheReadmeHoldsEveryRow) {
  std::ifstream readme(source_file("README.md"));
  std::stringstream text;
  text << readme.rdbuf();
  std::string missing;
  for (const Row& row : rows()) {
    if (text.str().find(markdown(row) + "\n") == std::string::npos) missing += markdown(row) + "\n";
  }
  EXPECT_TRUE(missing.empty()) << "README.md lacks these rows of the bad-input table:\n" << missing;
}

}  // namespace
}  // namespace micache::testing
