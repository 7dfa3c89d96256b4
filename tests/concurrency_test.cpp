// Thread safety as the headers state it: const queries on one cache from 8
// threads at once give the serial answers, and separate caches (KV,
// compressed, paged) mutated from separate threads (on the default stream,
// or each thread on its own OwnedStream) end as a serial run would leave
// them. Run under ThreadSanitizer by the `tsan` preset.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr int kThreads = 8;
constexpr int kRounds = 20;

// Runs `body(thread)` on kThreads threads started together; returns the count of failed checks.
int run_threads(const std::function<int(int)>& body) {
  std::atomic<bool> go{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      failures += body(t);
    });
  }
  go = true;
  for (std::thread& thread : threads) thread.join();
  return failures.load();
}

class ConcurrencyTest : public ::testing::TestWithParam<Device> {};

TEST_P(ConcurrencyTest, ConstAttentionQueriesFromEightThreadsGiveTheSerialAnswers) {
  AttentionCache cache = AttentionCache::with_capacity(2);
  for (std::uint32_t layer = 0; layer < 2; ++layer) {
    cache.push(Tensor::from_host(random_softmax_rows(4 * 33, 33, layer), {1, 4, 33, 33}, DType::BF16, GetParam()));
  }
  const std::vector<float> row = cache.attention_from_position(1, 32);
  const std::vector<float> column = cache.attention_to_position(0, 0);
  const auto top = cache.top_attended_positions(1, 20, 5, {.batch = 0, .heads = {1, 3}});
  const std::vector<float> received = cache.attention_received(0).to_host_f32();
  const std::vector<std::int32_t> all_top = cache.top_attended_all(1, 3).indices.to_host_i32();
  const int failures = run_threads([&](int) {
    int bad = 0;
    for (int round = 0; round < kRounds; ++round) {
      bad += cache.attention_from_position(1, 32) != row;
      bad += cache.attention_to_position(0, 0) != column;
      bad += cache.top_attended_positions(1, 20, 5, {.batch = 0, .heads = {1, 3}}) != top;
      bad += cache.attention_received(0).to_host_f32() != received;
      bad += cache.top_attended_all(1, 3).indices.to_host_i32() != all_top;
    }
    return bad;
  });
  EXPECT_EQ(failures, 0);
}

TEST_P(ConcurrencyTest, ConstKVCacheQueriesFromEightThreadsGiveTheSerialAnswers) {
  KVCache cache(2);
  for (std::uint32_t step = 0; step < 40; ++step) {
    const std::vector<float> values = random_values(2 * 16, step);
    for (std::size_t layer = 0; layer < 2; ++layer) {
      cache.append(layer, Tensor::from_host(values, {1, 2, 1, 16}, DType::F16, GetParam()),
                   Tensor::from_host(values, {1, 2, 1, 16}, DType::F16, GetParam()));
    }
  }
  cache.trim_to(25);  // the ring no longer starts at slot 0: keys() gathers into a new tensor
  const std::vector<std::byte> keys = cache.keys(1).to_host_bytes();
  const std::vector<std::size_t> positions = cache.positions(0);
  const std::size_t in_use = backend_for(GetParam()).memory_stats().in_use;
  const int failures = run_threads([&](int) {
    int bad = 0;
    for (int round = 0; round < kRounds; ++round) {
      bad += cache.keys(1).to_host_bytes() != keys;
      bad += cache.positions(0) != positions;
      bad += cache.memory_usage() != 2 * 2 * 25 * 2 * 16 * 2;
    }
    return bad;
  });
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(backend_for(GetParam()).memory_stats().in_use, in_use);
}

TEST_P(ConcurrencyTest, ConstCompressedQueriesFromEightThreadsGiveTheSerialAnswers) {
  MultiHeadKvCache cache(4, {.head_dim = 32, .bits = 4, .projections = 8, .seed = 3}, GetParam());
  Gaussian gaussian(1);
  for (int t = 0; t < 50; ++t) {
    std::vector<std::vector<float>> kv;
    for (int h = 0; h < 4; ++h) kv.push_back(gaussian.vector(32));
    cache.push_token(kv, kv);
  }
  std::vector<std::vector<float>> queries;
  for (int h = 0; h < 4; ++h) queries.push_back(gaussian.vector(32));
  const auto scores = cache.attention_scores(queries);
  const auto outputs = cache.attention_output(queries);
  const int failures = run_threads([&](int) {
    int bad = 0;
    for (int round = 0; round < kRounds; ++round) {
      bad += cache.attention_scores(queries) != scores;
      bad += cache.attention_output(queries) != outputs;
    }
    return bad;
  });
  EXPECT_EQ(failures, 0);
}

// The mutations one thread applies to its own caches, on `stream`: appends
// that grow the ring, a trim, a sinks-and-window eviction, compressed pushes
// and a window; and a paged pool's steps with token ids, writes, a fork with
// copy on write, a prefix hit on a released sequence's pages and an eviction.
struct OwnCaches {
  KVCache kv;
  MultiHeadKvCache compressed;
  PagedKvCache paged;
  SequenceId last{};

  OwnCaches(Device device, int seed, Stream stream = {})
      : kv(2, stream),
        compressed(2, {.head_dim = 16, .bits = 3, .projections = 4, .seed = static_cast<std::uint64_t>(seed)}, device,
                   stream),
        paged({.n_layers = 2, .kv_heads = 3, .head_dim = 8, .page_size = 4, .num_pages = 64, .dtype = DType::BF16,
               .max_sequences = 8},
              device, stream) {
    grow_paged(device, seed, stream);
    Gaussian gaussian(static_cast<std::uint32_t>(seed));
    for (int step = 0; step < 60; ++step) {
      const std::vector<float> values = gaussian.vector(3 * 8);
      for (std::size_t layer = 0; layer < 2; ++layer) {
        kv.append(layer, Tensor::from_host(values, {1, 3, 1, 8}, DType::BF16, device, stream),
                  Tensor::from_host(values, {1, 3, 1, 8}, DType::BF16, device, stream));
      }
      compressed.push_token({gaussian.vector(16), gaussian.vector(16)}, {gaussian.vector(16), gaussian.vector(16)});
      if (step == 30) kv.trim_to(20);
      if (step == 45) compressed.heads().keep_last(10);
    }
    kv.evict_to_window(2, 16);
    kv.shrink_to_fit();
  }

  void grow_paged(Device device, int seed, Stream stream) {
    Gaussian gaussian(static_cast<std::uint32_t>(seed) + 100);
    std::vector<std::int32_t> prompt(10);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<std::int32_t>(i) + seed;
    std::vector<SequenceId> ids{paged.add_sequence(prompt).id, paged.add_sequence()};
    const auto step = [&](const std::vector<std::size_t>& counts, const std::vector<std::int32_t>& tokens) {
      const PagedStepPlan plan = paged.begin_step(ids, counts, tokens);
      for (std::size_t layer = 0; layer < 2; ++layer) {
        const std::vector<float> values = gaussian.vector(plan.total_new * 3 * 8);
        paged.write(layer, plan, Tensor::from_host(values, {plan.total_new, 3, 8}, DType::BF16, device, stream),
                    Tensor::from_host(values, {plan.total_new, 3, 8}, DType::BF16, device, stream));
      }
    };
    std::vector<std::int32_t> first = prompt;
    first.insert(first.end(), {1, 2, 3});
    step({10, 3}, first);
    for (int t = 0; t < 12; ++t) step({1, 1}, {seed + t, t});
    ids.push_back(paged.fork(ids[1]));
    for (int t = 0; t < 3; ++t) step({1, 2, 1}, {t, t, t + 1, t + 2});
    paged.release(ids[0]);
    ids[0] = paged.add_sequence(prompt).id;  // the released pages come back from the prefix cache
    step({2, 1, 1}, {prompt[8], prompt[9], 4, 5});
    paged.evict_to_window(ids[1], 2, 6);
    step({1, 1, 1}, {6, 7, 8});
    last = ids[2];
  }
};

// What a thread's caches end holding: layer 1's keys, the compressed key
// records, and the paged pool's keys of its last sequence in layer 1.
std::vector<std::vector<std::byte>> held(const OwnCaches& caches) {
  return {caches.kv.keys(1).to_host_bytes(), caches.compressed.heads().records().first.to_host_bytes(),
          caches.paged.gather(caches.last, 1).keys.to_host_bytes()};
}

// Builds OwnCaches in kThreads threads at once, each on its own OwnedStream
// when `own_streams`; each must end as a serial run on the default stream
// leaves them, and memory must return to its prior level.
void expect_threads_end_as_a_serial_run(Device device, bool own_streams) {
  std::vector<std::vector<std::vector<std::byte>>> expected;
  for (int t = 0; t < kThreads; ++t) expected.push_back(held(OwnCaches(device, t)));
  const std::size_t in_use = backend_for(device).memory_stats().in_use;
  const int failures = run_threads([&](int t) {
    std::optional<OwnedStream> stream;
    if (own_streams) stream.emplace(device);
    const OwnCaches own(device, t, stream ? stream->get() : Stream{});
    return int{held(own) != expected[static_cast<std::size_t>(t)]};
  });
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(backend_for(device).memory_stats().in_use, in_use);
}

TEST_P(ConcurrencyTest, SeparateCachesMutatedFromSeparateThreadsEndAsASerialRun) {
  expect_threads_end_as_a_serial_run(GetParam(), false);
}

TEST_P(ConcurrencyTest, SeparateCachesEachOnItsThreadsOwnStreamEndAsASerialRun) {
  expect_threads_end_as_a_serial_run(GetParam(), true);
}

INSTANTIATE_TEST_SUITE_P(Devices, ConcurrencyTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
