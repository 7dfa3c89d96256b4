// PagedKvCache benchmarks on every available device (issue 14): a decode
// step's begin_step (host time, the one host-to-device copy), the write of a
// decode step and of a 32k-token prefill (effective bandwidth), the memory
// held for 1,000 lognormal sequences against a per-sequence max-length
// reservation, the prefix cache and copy on write as counters, and a
// Gemma-3-like hybrid model (five window-1024 layers per full one): its
// decode step and the bytes it holds at 32k tokens against every layer full.
// scripts/bench_torch.py times PyTorch's scatter (vLLM's reshape_and_cache)
// on the write geometry; the copy roof is a device copy of the keys and values.
//
// Geometry: 8 kv heads x head_dim 128, BF16, page_size 16 (4 KiB of keys and
// values per token per layer). Names are op/impl/device/dtype:bf16/heads:8/seq:S
// (bench_report.hpp), S the new tokens of the step (the prompt's tokens for
// the prefix hit, the sequence's for the fork); the counter-only memory
// benchmark has no dtype field, so scripts/bench_table.py leaves it out.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_report.hpp"
#include "micache/micache.hpp"

namespace {

using micache::Device;
using micache::DType;
using micache::KVCache;
using micache::PagedKvCache;
using micache::PagedKvConfig;
using micache::PagedLayerKind;
using micache::PagedStepPlan;
using micache::PrefixHit;
using micache::SequenceId;
using micache::Tensor;
using micache::bench::report_bytes;
using micache::bench::time_iteration;

constexpr std::size_t kKvHeads = 8;
constexpr std::size_t kHeadDim = 128;
constexpr std::size_t kPageSize = 16;
constexpr std::size_t kStepLayers = 4;  // begin_step's cost does not depend on it (no copy on write here)
constexpr std::size_t kBatch = 256;
constexpr std::size_t kPrefill = 32768;
constexpr std::size_t kRebuildEvery = 64;  // decode steps before the sequences are rebuilt at their first lengths
constexpr std::size_t kElementBytes = 2;   // BF16

// Decode sequence i's length before the step: spread over 600..4000 tokens (mean about 2300).
std::vector<std::size_t> decode_lengths() {
  std::vector<std::size_t> lengths(kBatch);
  for (std::size_t i = 0; i < kBatch; ++i) lengths[i] = 600 + (i * 2654435761u) % 3401;
  return lengths;
}

// Pages for the decode sequences, with room for kRebuildEvery more steps.
std::size_t decode_pool_pages(const std::vector<std::size_t>& lengths) {
  std::size_t pages = 0;
  for (const std::size_t length : lengths) pages += (length + kRebuildEvery + kPageSize - 1) / kPageSize;
  return pages;
}

PagedKvConfig config(std::size_t layers, std::size_t pages) {
  return PagedKvConfig{.n_layers = layers,
                       .kv_heads = kKvHeads,
                       .head_dim = kHeadDim,
                       .page_size = kPageSize,
                       .num_pages = pages,
                       .dtype = DType::BF16};
}

// Token ids 0, 1, 2, ... offset by `first`.
std::vector<std::int32_t> token_ids(std::size_t count, std::int32_t first) {
  std::vector<std::int32_t> ids(count);
  std::iota(ids.begin(), ids.end(), first);
  return ids;
}

// `lengths.size()` new sequences holding `lengths[i]` tokens each, reserved
// in one step (with token ids when `named`, so their full pages are named).
std::vector<SequenceId> add_sequences(PagedKvCache& cache, const std::vector<std::size_t>& lengths, bool named) {
  std::vector<SequenceId> ids(lengths.size());
  for (SequenceId& id : ids) id = cache.add_sequence();
  const std::size_t total = std::accumulate(lengths.begin(), lengths.end(), std::size_t{0});
  const std::vector<std::int32_t> tokens = named ? token_ids(total, 0) : std::vector<std::int32_t>{};
  cache.begin_step(ids, lengths, tokens);
  return ids;
}

// Keys or values of `tokens` tokens, [tokens, 8, 128] BF16.
Tensor random_tokens(std::size_t tokens, Device device, std::uint32_t seed) {
  std::vector<float> values(tokens * kKvHeads * kHeadDim);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>((i * 2654435761u + seed) % 1000) * 1e-3f;
  }
  return Tensor::from_host(values, {tokens, kKvHeads, kHeadDim}, DType::BF16, device);
}

// Wall-clock seconds of `body` on the host, without synchronising the device:
// what a server's scheduling thread spends on it.
double host_seconds(const std::function<void()>& body) {
  const auto start = std::chrono::steady_clock::now();
  body();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Bytes of the plan's packed buffer: slot_mapping first, qo_indptr last.
// Bytes of a plan's metadata, which the step's build launch writes on the device.
std::size_t plan_bytes(const PagedStepPlan& plan) {
  const auto* first = static_cast<const std::byte*>(plan.slot_mapping.data());
  const auto* last = static_cast<const std::byte*>(plan.qo_indptr.data()) + plan.qo_indptr.nbytes();
  return static_cast<std::size_t>(last - first);
}

// Bytes a step of `batch` sequences in `groups` layer groups changing
// `updates` columns (fresh and dropped pages) sends to the device
// (PagedKvCache::begin_step): row, length and count per sequence and group,
// the updates' indptr, a column and a page id per update.
std::size_t step_input_bytes(std::size_t batch, std::size_t groups, std::size_t updates) {
  return 16 * batch * groups + 4 + 8 * updates;
}

constexpr std::size_t kGemmaWindow = 1024;

// Gemma 3's layer kinds: five sliding-window layers (1024 tokens) per global layer.
std::vector<PagedLayerKind> gemma3_kinds(std::size_t layers) {
  std::vector<PagedLayerKind> kinds(layers, PagedLayerKind::sliding(kGemmaWindow));
  for (std::size_t l = 5; l < layers; l += 6) kinds[l] = PagedLayerKind::full();
  return kinds;
}

// One decode step of 256 sequences of 600..4000 tokens (1 new token each):
// begin_step's host time, the previous step's plan dropped inside it (as a
// server's loop does); the device is synchronised after each step, untimed.
// Every 64 steps the sequences are released and re-added at their first
// lengths (untimed), so the pool's state stays the same. With `named` every
// step passes its token ids (prefix caching on: a page that fills is hashed
// and named; after the first rebuild the spare pages are cached ones, so a
// fresh page is an eviction). With `kinds` (a hybrid model), the layers'
// kinds: each group has its own pages and table rows, and window groups
// give back the pages that slide out. Counters, of the first step: the
// host-to-device copy's bytes, the metadata bytes built on the device, the
// step's pages (every group's).
void begin_step_decode(benchmark::State& state, Device device, bool named,
                       const std::vector<PagedLayerKind>& kinds = {}) {
  const std::vector<std::size_t> lengths = decode_lengths();
  PagedKvConfig c = config(kinds.empty() ? kStepLayers : kinds.size(), decode_pool_pages(lengths));
  c.layer_kinds = kinds;
  c.num_pages *= c.layer_groups().groups();
  PagedKvCache cache(c, device);
  micache::Backend& backend = micache::backend_for(device);
  const std::vector<std::size_t> ones(kBatch, 1);
  // A hybrid model's first step after the prefill gives back every window page that slid out during it
  // (untimed): the timed steps are the steady decode steps, a page given back per group every 16.
  const auto add = [&] {
    std::vector<SequenceId> added = add_sequences(cache, lengths, named);
    if (!kinds.empty()) cache.begin_step(added, ones);
    return added;
  };
  std::vector<SequenceId> ids = add();
  const std::vector<std::int32_t> new_ids = named ? token_ids(kBatch, 7) : std::vector<std::int32_t>{};
  PagedStepPlan plan;
  std::size_t steps = 0;
  std::size_t copied = 0;
  std::size_t metadata = 0;
  std::size_t pages = 0;
  const micache::PagedLayerGroups& groups = cache.layer_groups();
  // Over every group's tables: columns, and columns naming the null page.
  const auto columns = [&] {
    std::size_t all = 0, null = 0;
    for (std::size_t g = 0; g < groups.groups(); ++g) {
      const auto layer = static_cast<std::size_t>(
          std::find(groups.layer_group.begin(), groups.layer_group.end(), g) - groups.layer_group.begin());
      for (const SequenceId id : ids) {
        const std::vector<std::int32_t> pages = cache.pages_of(id, layer);
        all += pages.size();
        null += static_cast<std::size_t>(std::count(pages.begin(), pages.end(), static_cast<std::int32_t>(cache.config().pool_pages())));
      }
    }
    return std::pair{all, null};
  };
  for (auto _ : state) {
    const auto before = steps == 0 ? columns() : std::pair<std::size_t, std::size_t>{};
    state.SetIterationTime(host_seconds([&] { plan = cache.begin_step(ids, ones, new_ids); }));
    backend.synchronize({});
    if (++steps == 1) {
      const auto after = columns();
      copied = step_input_bytes(kBatch, groups.groups(), after.first - before.first + after.second - before.second);
      metadata = plan_bytes(plan);
      pages = plan.kv_indices.numel();
    }
    if (steps % kRebuildEvery == 0) {
      plan = PagedStepPlan{};
      for (const SequenceId id : ids) cache.release(id);
      ids = add();
    }
  }
  state.counters["h2d_bytes"] = static_cast<double>(copied);
  state.counters["metadata_bytes"] = static_cast<double>(metadata);
  state.counters["pages"] = static_cast<double>(pages);
  state.counters["batch"] = static_cast<double>(kBatch);
}

void begin_step_decode_unnamed(benchmark::State& state, Device device) { begin_step_decode(state, device, false); }
void begin_step_decode_named(benchmark::State& state, Device device) { begin_step_decode(state, device, true); }
void begin_step_decode_gemma3(benchmark::State& state, Device device) {
  begin_step_decode(state, device, false, gemma3_kinds(6));
  state.counters["groups"] = 6;
}

// Bytes one write of `tokens` tokens moves (PagedWrite): keys and values read
// and written, and the slot mapping read.
std::size_t write_bytes(std::size_t tokens) { return 4 * tokens * kKvHeads * kHeadDim * kElementBytes + 8 * tokens; }

// Times one `write` (one Backend::paged_write) of a step's keys and values
// into one layer, the same plan every iteration (so the same slots: written
// once before timing, the pages are resident).
void time_write(benchmark::State& state, Device device, PagedKvCache& cache, const PagedStepPlan& plan) {
  const Tensor keys = random_tokens(plan.total_new, device, 1);
  const Tensor values = random_tokens(plan.total_new, device, 2);
  cache.write(0, plan, keys, values);
  micache::backend_for(device).synchronize({});
  for (auto _ : state) {
    time_iteration(state, device, [&] { cache.write(0, plan, keys, values); });
  }
  report_bytes(state, write_bytes(plan.total_new));
}

// The write of one decode step: 256 tokens, one per sequence of 600..4000
// tokens, scattered over a pool of ~37k pages.
void write_decode(benchmark::State& state, Device device) {
  const std::vector<std::size_t> lengths = decode_lengths();
  PagedKvCache cache(config(1, decode_pool_pages(lengths)), device);
  const std::vector<SequenceId> ids = add_sequences(cache, lengths, false);
  const PagedStepPlan plan = cache.begin_step(ids, std::vector<std::size_t>(kBatch, 1));
  time_write(state, device, cache, plan);
}

// The write of a 32k-token prefill of one sequence into a fresh pool.
void write_prefill(benchmark::State& state, Device device) {
  PagedKvCache cache(config(1, kPrefill / kPageSize), device);
  const SequenceId id = cache.add_sequence();
  const std::vector<std::size_t> counts{kPrefill};
  const PagedStepPlan plan = cache.begin_step({&id, 1}, counts);
  time_write(state, device, cache, plan);
}

// The roof for a write of `tokens` tokens: one device copy of their keys and values.
void write_copy_roof(benchmark::State& state, Device device, std::size_t tokens) {
  micache::bench::time_device_copy(state, device, 2 * tokens * kKvHeads * kHeadDim * kElementBytes);
}
void write_decode_roof(benchmark::State& state, Device device) { write_copy_roof(state, device, kBatch); }
void write_prefill_roof(benchmark::State& state, Device device) { write_copy_roof(state, device, kPrefill); }

constexpr std::size_t kMemorySequences = 1000;
constexpr double kLognormalMu = 6.396929655216146;  // ln 600: the median length is 600 tokens
constexpr double kLognormalSigma = 0.8;
constexpr std::size_t kMaxLength = 8192;
constexpr std::uint64_t kLengthSeed = 14;

// 1,000 lengths from lognormal(mu = ln 600, sigma = 0.8) (std::mt19937_64
// seeded 14, libstdc++'s lognormal_distribution), rounded, clipped to 1..8192.
std::vector<std::size_t> lognormal_lengths() {
  std::mt19937_64 engine(kLengthSeed);
  std::lognormal_distribution<double> distribution(kLognormalMu, kLognormalSigma);
  std::vector<std::size_t> lengths(kMemorySequences);
  for (std::size_t& length : lengths) {
    length = std::clamp<std::size_t>(static_cast<std::size_t>(std::llround(distribution(engine))), 1, kMaxLength);
  }
  return lengths;
}

// Memory of 1,000 sequences of lognormal lengths: the bytes of their tokens
// (memory_usage) over the bytes held (pages used x page_bytes) in a
// PagedKvCache, against the same over KVCache's memory_reserved when each
// sequence reserves the maximum length (one KVCache per sequence,
// `reserve(8192)`). Geometry does not change the ratios: 1 layer x 1 kv
// head x head_dim 8 keeps the reservation side at 512 MiB. Counters only;
// one iteration.
void memory_lognormal(benchmark::State& state, Device device) {
  const std::vector<std::size_t> lengths = lognormal_lengths();
  const std::size_t total = std::accumulate(lengths.begin(), lengths.end(), std::size_t{0});
  std::vector<std::size_t> sorted = lengths;
  std::sort(sorted.begin(), sorted.end());
  for (auto _ : state) {
    PagedKvCache paged(PagedKvConfig{.n_layers = 1,
                                     .kv_heads = 1,
                                     .head_dim = 8,
                                     .page_size = kPageSize,
                                     .num_pages = total / kPageSize + kMemorySequences,
                                     .dtype = DType::BF16},
                       device);
    add_sequences(paged, lengths, false);
    const micache::PagedPoolStats pool = paged.pool_stats();
    state.counters["paged_used_over_held"] =
        static_cast<double>(paged.memory_usage()) / static_cast<double>(pool.bytes_used);
    state.counters["paged_pages"] = static_cast<double>(pool.pages_used);

    const Tensor longest =
        Tensor::from_host(std::vector<float>(kMaxLength * 8, 0.5f), {kMaxLength, 8}, DType::BF16, device);
    std::size_t usage = 0, reserved = 0;
    for (const std::size_t length : lengths) {
      KVCache cache(1);
      const Tensor tokens = longest.narrow(0, length).reshape({1, 1, length, 8});
      cache.append(0, tokens, tokens);
      cache.reserve(kMaxLength);
      usage += cache.memory_usage();
      reserved += cache.memory_reserved();
    }
    state.counters["max_reserve_used_over_held"] = static_cast<double>(usage) / static_cast<double>(reserved);
  }
  state.counters["tokens"] = static_cast<double>(total);
  state.counters["median_length"] = static_cast<double>(sorted[sorted.size() / 2]);
  state.counters["max_length"] = static_cast<double>(sorted.back());
}

// Gemma 3's memory at 32k tokens: one sequence of 32,768 tokens by chunked
// prefill (32 steps of 1,024) and one decode step, in a six-layer model
// with five window-1024 layers per full one, against the same model with
// every layer full, measured the same way (pool_stats().bytes_used, the
// pages held). Geometry does not change the ratio (1 kv head x head_dim 8).
// Counters only; one iteration.
void memory_hybrid(benchmark::State& state, Device device) {
  constexpr std::size_t layers = 6, tokens = 32768, chunk = 1024;
  std::size_t held[2] = {0, 0}, usage[2] = {0, 0};
  for (auto _ : state) {
    for (int hybrid = 0; hybrid < 2; ++hybrid) {
      PagedKvConfig c{.n_layers = layers,
                      .kv_heads = 1,
                      .head_dim = 8,
                      .page_size = kPageSize,
                      .num_pages = 2 * layers * tokens / kPageSize,
                      .dtype = DType::BF16,
                      .max_sequences = 1};
      if (hybrid == 1) c.layer_kinds = gemma3_kinds(layers);
      PagedKvCache cache(c, device);
      const SequenceId id = cache.add_sequence();
      const std::vector<std::size_t> counts{chunk}, one{1};
      for (std::size_t t = 0; t < tokens; t += chunk) cache.begin_step({&id, 1}, counts);
      cache.begin_step({&id, 1}, one);
      held[hybrid] = cache.pool_stats().bytes_used;
      usage[hybrid] = cache.memory_usage();
    }
  }
  state.counters["full_bytes_held"] = static_cast<double>(held[0]);
  state.counters["hybrid_bytes_held"] = static_cast<double>(held[1]);
  state.counters["hybrid_over_full"] = static_cast<double>(held[1]) / static_cast<double>(held[0]);
  state.counters["hybrid_used_over_held"] = static_cast<double>(usage[1]) / static_cast<double>(held[1]);
  state.counters["tokens"] = static_cast<double>(tokens + 1);
}

constexpr std::size_t kPrompt = 2048;
constexpr std::size_t kCachedPrompt = 1984;

// A 2,048-token prompt whose first 1,984 tokens (124 pages) another sequence
// computed: add_sequence's host time (hashing the prompt, sharing 124 pages),
// the new sequence released after each iteration (untimed). Counters, from
// the first iteration: the cached tokens, the device bytes add_sequence
// allocated (in_use after - before: 0, nothing copied), and the fresh pages the
// step of the 64 remaining tokens takes (4).
void prefix_hit(benchmark::State& state, Device device) {
  PagedKvCache cache(config(kStepLayers, 256), device);
  micache::Backend& backend = micache::backend_for(device);
  const std::vector<std::int32_t> prompt = token_ids(kPrompt, 100);
  const PrefixHit first = cache.add_sequence(std::span(prompt).first(kCachedPrompt));
  const std::vector<std::size_t> counts{kCachedPrompt};
  cache.begin_step({&first.id, 1}, counts, std::span(prompt).first(kCachedPrompt));
  backend.synchronize({});

  const std::size_t in_use = backend.memory_stats().in_use;
  const std::size_t used = cache.pool_stats().pages_used;
  const PrefixHit hit = cache.add_sequence(prompt);
  state.counters["cached_tokens"] = static_cast<double>(hit.cached_tokens);
  state.counters["add_sequence_device_bytes"] =
      static_cast<double>(backend.memory_stats().in_use) - static_cast<double>(in_use);
  const std::vector<std::size_t> rest{kPrompt - hit.cached_tokens};
  cache.begin_step({&hit.id, 1}, rest, std::span(prompt).subspan(hit.cached_tokens));
  state.counters["pages_taken"] = static_cast<double>(cache.pool_stats().pages_used - used);
  cache.release(hit.id);

  for (auto _ : state) {
    PrefixHit again;
    state.SetIterationTime(host_seconds([&] { again = cache.add_sequence(prompt); }));
    cache.release(again.id);
  }
}

constexpr std::size_t kForked = 1000;  // 62 full pages and 8 tokens in the last one

// A fork of a 1,000-token sequence, then a one-token step and its write into
// every layer: the shared partly filled last page is copied once (copy on
// write, one device copy per layer). Timed: fork + begin_step + the writes
// (time_iteration); the fork is released after each iteration (untimed).
// Counters: pages copied (pages used after - before: the last page had room,
// so the only new page is the copy), the bytes copied (that x page_bytes),
// and the pages the fork shares with its parent after the step.
void fork_write(benchmark::State& state, Device device) {
  PagedKvCache cache(config(kStepLayers, 256), device);
  const SequenceId parent = add_sequences(cache, {kForked}, false).front();
  const Tensor token = random_tokens(1, device, 3);
  const std::vector<std::size_t> one{1};
  std::size_t copied_pages = 0;
  std::size_t shared_pages = 0;
  for (auto _ : state) {
    const std::size_t used = cache.pool_stats().pages_used;
    SequenceId child{};
    time_iteration(state, device, [&] {
      child = cache.fork(parent);
      const PagedStepPlan plan = cache.begin_step({&child, 1}, one);
      for (std::size_t layer = 0; layer < kStepLayers; ++layer) cache.write(layer, plan, token, token);
    });
    copied_pages = cache.pool_stats().pages_used - used;
    shared_pages = cache.pool_stats().pages_shared;
    cache.release(child);
  }
  state.counters["pages_copied"] = static_cast<double>(copied_pages);
  state.counters["bytes_copied"] = static_cast<double>(copied_pages * cache.config().page_bytes());
  state.counters["pages_shared"] = static_cast<double>(shared_pages);
}

std::string name(const char* op, Device device, std::size_t seq, const char* impl = "micache") {
  return micache::bench::bench_name(op, impl, device, DType::BF16, kKvHeads, seq);
}

const bool registered = [] {
  for (const Device device : micache::available_devices()) {
    const auto add = [&](const std::string& bench, void (*fn)(benchmark::State&, Device), benchmark::TimeUnit unit) {
      return benchmark::RegisterBenchmark(bench.c_str(), fn, device)->UseManualTime()->Unit(unit);
    };
    add(name("paged_begin_step", device, kBatch), begin_step_decode_unnamed, benchmark::kMicrosecond);
    add(name("paged_begin_step_named", device, kBatch), begin_step_decode_named, benchmark::kMicrosecond);
    add(name("paged_begin_step_gemma3", device, kBatch), begin_step_decode_gemma3, benchmark::kMicrosecond);
    add(name("paged_write", device, kBatch), write_decode, benchmark::kMicrosecond);
    add(name("paged_write", device, kPrefill), write_prefill, benchmark::kMillisecond);
    add(name("paged_write", device, kBatch, "copy_roof"), write_decode_roof, benchmark::kMicrosecond);
    add(name("paged_write", device, kPrefill, "copy_roof"), write_prefill_roof, benchmark::kMillisecond);
    add(name("paged_prefix_hit", device, kPrompt), prefix_hit, benchmark::kMicrosecond);
    add(name("paged_fork_write", device, kForked), fork_write, benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(
        ("paged_memory_lognormal/micache/" + device.to_string() + "/seqs:1000/max:8192").c_str(), memory_lognormal,
        device)
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(
        ("paged_memory_hybrid/gemma3_like/" + device.to_string() + "/layers:6/tokens:32769").c_str(), memory_hybrid,
        device)
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
