// Streams: OwnedStream's lifetime, the CPU backend's stream checks, tensors
// that remember their stream, and every cache doing its device work on the
// stream it was built with.
//
// How the last is shown on a machine without a GPU: a CPU stream is a checked
// handle, so once it is destroyed any backend call given it throws. Each
// operation below runs on a cache whose stream was destroyed after the cache
// was built; it must throw that error, which it can only do if the operation
// handed the cache's stream (not the default one) to the backend.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "file_support.hpp"
#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

constexpr Device kCpu = Device::cpu();

// Expects `fn()` to throw Error(Backend) about a stream that is not live.
template <class Fn>
void expect_dead_stream(Fn&& fn) {
  try {
    fn();
    ADD_FAILURE() << "nothing thrown: the call did not use the destroyed stream";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Backend) << e.what();
    EXPECT_NE(std::string(e.what()).find("is not a live cpu stream"), std::string::npos) << e.what();
  }
}

TEST(OwnedStream, GivesEachStreamItsOwnHandle) {
  const OwnedStream a(kCpu);
  const OwnedStream b(kCpu);
  EXPECT_NE(a.get(), Stream{});
  EXPECT_NE(a.get(), b.get());
  EXPECT_EQ(a.device(), kCpu);
}

TEST(OwnedStream, MovingHandsTheStreamOver) {
  OwnedStream a(kCpu);
  const Stream handle = a.get();
  OwnedStream b(std::move(a));
  EXPECT_EQ(a.get(), Stream{});  // NOLINT(bugprone-use-after-move): moved-from is specified
  EXPECT_EQ(b.get(), handle);
  EXPECT_NO_THROW(b.synchronize());
}

TEST(OwnedStream, ResetDestroysTheStream) {
  OwnedStream stream(kCpu);
  const Stream handle = stream.get();
  stream.reset();
  EXPECT_EQ(stream.get(), Stream{});
  expect_dead_stream([&] { backend_for(kCpu).synchronize(handle); });
}

TEST(CpuStreams, AHandleTheBackendDidNotMakeIsRejected) {
  int not_a_stream = 0;
  expect_dead_stream([&] { backend_for(kCpu).synchronize(Stream{&not_a_stream}); });
}

TEST(CpuStreams, TheDefaultStreamIsAlwaysAccepted) { EXPECT_NO_THROW(backend_for(kCpu).synchronize({})); }

TEST(CpuStreams, WaitStreamChecksBothStreams) {
  OwnedStream waiter(kCpu), producer(kCpu);
  EXPECT_NO_THROW(backend_for(kCpu).wait_stream(waiter.get(), producer.get()));
  EXPECT_NO_THROW(backend_for(kCpu).wait_stream({}, producer.get()));
  const Stream dead = producer.get();
  producer.reset();
  expect_dead_stream([&] { backend_for(kCpu).wait_stream(waiter.get(), dead); });
  expect_dead_stream([&] { backend_for(kCpu).wait_stream(dead, waiter.get()); });
}

TEST(CpuStreams, AllocationOnADestroyedStreamFailsAndCountsNothing) {
  OwnedStream stream(kCpu);
  const Stream handle = stream.get();
  stream.reset();
  const std::size_t in_use = backend_for(kCpu).memory_stats().in_use;
  expect_dead_stream([&] { Tensor::empty({64}, DType::F32, kCpu, handle); });
  EXPECT_EQ(backend_for(kCpu).memory_stats().in_use, in_use);
}

TEST(TensorStreams, ATensorRemembersItsStreamAndItsViewsShareIt) {
  const OwnedStream stream(kCpu);
  const Tensor t = Tensor::from_host(random_values(6, 1), {2, 3}, DType::F32, kCpu, stream.get());
  EXPECT_EQ(t.stream(), stream.get());
  EXPECT_EQ(t.select(1).stream(), stream.get());
  EXPECT_EQ(t.reshape({3, 2}).stream(), stream.get());
}

TEST(TensorStreams, AWrappedTensorKeepsTheStreamItIsProducedOn) {
  const OwnedStream stream(kCpu);
  std::vector<float> data = random_values(4, 2);
  const Tensor t = Tensor::wrap(data.data(), {4}, DType::F32, kCpu, {}, stream.get());
  EXPECT_EQ(t.stream(), stream.get());
  EXPECT_EQ(t.to_host_f32(), data);
}

TEST(TensorStreams, ConversionStaysOnTheTensorsStream) {
  const OwnedStream stream(kCpu);
  const Tensor t = Tensor::from_host(random_values(6, 1), {6}, DType::F32, kCpu, stream.get());
  EXPECT_EQ(t.to_dtype(DType::BF16).stream(), stream.get());
}

TEST(TensorStreams, ACopyToADeviceLandsOnTheStreamAskedFor) {
  const OwnedStream first(kCpu);
  const OwnedStream second(kCpu);
  const Tensor t = Tensor::from_host(random_values(6, 1), {6}, DType::F32, kCpu, first.get());
  EXPECT_EQ(t.to(kCpu).stream(), Stream{});
  EXPECT_EQ(t.to(kCpu, second.get()).stream(), second.get());
}

// ---- every cache operation that does device work uses the cache's stream ----

// One operation: `prepare(stream)` builds a cache on the live `stream` and
// returns the operation to run on it once the stream is destroyed.
struct StreamedOperation {
  std::string name;
  std::function<std::function<void()>(Stream)> prepare;
};

void PrintTo(const StreamedOperation& operation, std::ostream* out) { *out << operation.name; }

// `op(cache)` on the cache `make(stream)` returns.
template <class Make, class Op>
StreamedOperation operation(std::string name, Make make, Op op) {
  return {std::move(name), [make, op](Stream stream) -> std::function<void()> {
            auto cache = std::make_shared<decltype(make(stream))>(make(stream));
            return [cache, op] { op(*cache); };
          }};
}

Tensor pattern_on(Stream stream) {
  return Tensor::from_host(random_softmax_rows(2 * 6, 6, 1), {1, 2, 6, 6}, DType::BF16, kCpu, stream);
}

AttentionCache attention_on(Stream stream) {
  AttentionCache cache(stream);
  cache.push(pattern_on(stream));
  return cache;
}

FullActivationCache activations_on(Stream stream) {
  FullActivationCache cache(stream);
  for (std::uint32_t layer = 0; layer < 3; ++layer) {
    cache.push(Tensor::from_host(random_values(5 * 4, layer), {5, 4}, DType::F32, kCpu, stream));
  }
  return cache;
}

// [1, 2, tokens, 4] F32 keys or values on the default stream.
Tensor kv_tokens(std::size_t tokens, std::uint32_t seed) {
  return Tensor::from_host(random_values(2 * tokens * 4, seed), {1, 2, tokens, 4}, DType::F32, kCpu);
}

// Two layers of 20 tokens with room for 64, trimmed to 15 (the ring starts at slot 5).
KVCache kv_on(Stream stream) {
  KVCache cache(2, stream);
  for (std::size_t layer = 0; layer < 2; ++layer) cache.append(layer, kv_tokens(20, 1), kv_tokens(20, 2));
  cache.reserve(64);
  cache.trim_to(15);
  return cache;
}

const KvCacheConfig kConfig{.head_dim = 8, .bits = 4, .projections = 4, .seed = 5};

std::vector<std::vector<float>> head_vectors(std::uint32_t seed) {
  Gaussian gaussian(seed);
  return {gaussian.vector(8), gaussian.vector(8)};
}

// Two heads, five tokens.
MultiHeadKvCache compressed_on(Stream stream) {
  MultiHeadKvCache cache(2, kConfig, kCpu, stream);
  for (std::uint32_t t = 0; t < 5; ++t) cache.push_token(head_vectors(t), head_vectors(t + 100));
  return cache;
}

Tensor heads_tensor(std::uint32_t seed) {
  Gaussian gaussian(seed);
  return Tensor::from_host(gaussian.vector(2 * 8), {2, 8}, DType::F32, kCpu);
}

std::vector<StreamedOperation> streamed_operations() {
  using A = AttentionCache;
  using C = MultiHeadKvCache;
  return {
      operation("attention_from_position", attention_on, [](const A& c) { c.attention_from_position(0, 5); }),
      operation("attention_to_position", attention_on, [](const A& c) { c.attention_to_position(0, 0); }),
      operation("top_attended_positions", attention_on, [](const A& c) { c.top_attended_positions(0, 5, 3); }),
      operation("attention_head_mean", attention_on, [](const A& c) { c.head_mean(0); }),
      operation("attention_received", attention_on, [](const A& c) { c.attention_received(0); }),
      operation("top_attended_all", attention_on, [](const A& c) { c.top_attended_all(0, 2); }),
      operation("stack_position", activations_on, [](const FullActivationCache& c) { c.stack_position(3); }),
      operation("kv_set_layer", kv_on, [](KVCache& c) { c.set_layer(0, kv_tokens(15, 3), kv_tokens(15, 4)); }),
      operation("kv_append_within_capacity", kv_on, [](KVCache& c) { c.append(0, kv_tokens(1, 3), kv_tokens(1, 4)); }),
      operation("kv_reserve", kv_on, [](KVCache& c) { c.reserve(128); }),
      operation("kv_keys_gather", kv_on, [](const KVCache& c) { c.keys(1); }),
      operation("kv_evict_to_window", kv_on, [](KVCache& c) { c.evict_to_window(2, 4); }),
      operation("kv_evict_heavy_hitters", kv_on,
                [](KVCache& c) {
                  c.evict_heavy_hitters(Tensor::from_host(random_values(15, 9), {15}, DType::F32, kCpu), 3, 4);
                }),
      operation("kv_shrink_to_fit", kv_on, [](KVCache& c) { c.shrink_to_fit(); }),
      operation("compressed_push_token", compressed_on, [](C& c) { c.push_token(head_vectors(7), head_vectors(8)); }),
      operation("compressed_push_tensor", compressed_on, [](C& c) { c.heads().push(heads_tensor(7), heads_tensor(8)); }),
      operation("compressed_reserve", compressed_on, [](C& c) { c.heads().reserve(64); }),
      operation("compressed_attention_scores", compressed_on, [](const C& c) { c.attention_scores(head_vectors(9)); }),
      operation("compressed_attention_output", compressed_on, [](const C& c) { c.attention_output(head_vectors(9)); }),
      operation("compressed_scores_tensor", compressed_on, [](const C& c) { c.heads().scores(heads_tensor(9)); }),
      operation("compressed_head_scores", compressed_on,
                [](const C& c) { c.head(1)->attention_scores(head_vectors(9)[0]); }),
      operation("compressed_decode", compressed_on, [](const C& c) { c.heads().decode_values(); }),
      operation("compressed_records", compressed_on, [](const C& c) { c.heads().records(); }),
      operation("compressed_assign_records", compressed_on,
                [](C& c) {
                  const MultiHeadKvCache source = compressed_on({});
                  const auto [keys, values] = source.heads().records();
                  c.heads().assign_records(keys, values);
                }),
  };
}

class CacheOnADestroyedStream : public ::testing::TestWithParam<StreamedOperation> {};

TEST_P(CacheOnADestroyedStream, TheOperationReachesTheBackendOnTheCachesStream) {
  OwnedStream stream(kCpu);
  const std::function<void()> run = GetParam().prepare(stream.get());
  stream.reset();
  expect_dead_stream(run);
}

std::string operation_name(const ::testing::TestParamInfo<StreamedOperation>& param) { return param.param.name; }

INSTANTIATE_TEST_SUITE_P(Operations, CacheOnADestroyedStream, ::testing::ValuesIn(streamed_operations()),
                         operation_name);

TEST(CacheOnADestroyedStream, ACompressedCacheBuildsItsTablesOnItsStream) {
  OwnedStream stream(kCpu);
  const Stream handle = stream.get();
  stream.reset();
  expect_dead_stream([&] { MultiHeadKvCache(2, kConfig, kCpu, handle); });
}

TEST(CacheOnADestroyedStream, EveryLoadAllocatesOnTheStreamItIsGiven) {
  const ScratchDir dir;
  attention_on({}).save(dir.path("attention.safetensors"));
  activations_on({}).save(dir.path("full.safetensors"));
  ActivationCache::new_cache({kv_tokens(1, 1)}).save(dir.path("activation.safetensors"));
  kv_on({}).save(dir.path("kv.safetensors"));
  compressed_on({}).save(dir.path("compressed.safetensors"));
  GqaKvCache(1, 2, kConfig).save(dir.path("gqa.safetensors"));
  SlidingWindowKvCache(1, 2, 4, kConfig).save(dir.path("window.safetensors"));
  KvCacheCompressor(kConfig).save(dir.path("one_head.safetensors"));

  OwnedStream stream(kCpu);
  const Stream dead = stream.get();
  stream.reset();
  expect_dead_stream([&] { AttentionCache::load(dir.path("attention.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { FullActivationCache::load(dir.path("full.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { ActivationCache::load(dir.path("activation.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { KVCache::load(dir.path("kv.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { MultiHeadKvCache::load(dir.path("compressed.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { GqaKvCache::load(dir.path("gqa.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { SlidingWindowKvCache::load(dir.path("window.safetensors"), kCpu, dead); });
  expect_dead_stream([&] { KvCacheCompressor::load(dir.path("one_head.safetensors"), kCpu, dead); });
}

TEST(CacheOnADestroyedStream, TheFailedOperationLeavesTheCacheAsItWas) {
  OwnedStream stream(kCpu);
  KVCache cache = kv_on(stream.get());
  const std::vector<std::size_t> positions = cache.positions(0);
  const std::size_t capacity = cache.capacity();
  stream.reset();
  expect_dead_stream([&] { cache.append(0, kv_tokens(1, 3), kv_tokens(1, 4)); });
  EXPECT_EQ(cache.seq_len(), 15u);
  EXPECT_EQ(cache.positions(0), positions);
  EXPECT_EQ(cache.capacity(), capacity);
}

// ---- on every device: a cache on its own stream gives the default stream's answers ----

class StreamAnswers : public ::testing::TestWithParam<Device> {};

TEST_P(StreamAnswers, AKVCacheOnAnOwnedStreamHoldsWhatTheDefaultStreamsHolds) {
  const Device device = GetParam();
  const OwnedStream stream(device);
  KVCache on_stream(1, stream.get());
  KVCache on_default(1);
  for (std::uint32_t step = 0; step < 40; ++step) {
    const std::vector<float> values = random_values(2 * 4, step);
    for (KVCache* cache : {&on_stream, &on_default}) {
      cache->append(0, Tensor::from_host(values, {1, 2, 1, 4}, DType::BF16, device),
                    Tensor::from_host(values, {1, 2, 1, 4}, DType::BF16, device));
    }
  }
  for (KVCache* cache : {&on_stream, &on_default}) cache->evict_to_window(3, 20);
  EXPECT_EQ(on_stream.keys(0).stream(), stream.get());
  EXPECT_EQ(on_stream.keys(0).to_host_bytes(), on_default.keys(0).to_host_bytes());
  EXPECT_EQ(on_stream.positions(0), on_default.positions(0));
}

TEST_P(StreamAnswers, AnAttentionCacheOnAnOwnedStreamAnswersAsTheDefaultStreams) {
  const Device device = GetParam();
  const OwnedStream stream(device);
  const Tensor pattern =
      Tensor::from_host(random_softmax_rows(4 * 40, 40, 3), {1, 4, 40, 40}, DType::F16, device, stream.get());
  AttentionCache on_stream(stream.get());
  AttentionCache on_default;
  on_stream.push(pattern);
  on_default.push(pattern);
  const TopK top = on_stream.top_attended_all(0, 5);
  EXPECT_EQ(top.indices.stream(), stream.get());
  EXPECT_EQ(top.indices.to_host_i32(), on_default.top_attended_all(0, 5).indices.to_host_i32());
  expect_same_bits(on_stream.head_mean(0).to_host_f32(), on_default.head_mean(0).to_host_f32());
}

TEST_P(StreamAnswers, ACompressedCacheOnAnOwnedStreamAnswersAsTheDefaultStreams) {
  const Device device = GetParam();
  const OwnedStream stream(device);
  MultiHeadKvCache on_stream(2, kConfig, device, stream.get());
  MultiHeadKvCache on_default(2, kConfig, device);
  for (std::uint32_t t = 0; t < 30; ++t) {
    on_stream.push_token(head_vectors(t), head_vectors(t + 100));
    on_default.push_token(head_vectors(t), head_vectors(t + 100));
  }
  EXPECT_EQ(on_stream.heads().records().first.to_host_bytes(), on_default.heads().records().first.to_host_bytes());
  EXPECT_EQ(on_stream.attention_output(head_vectors(7)), on_default.attention_output(head_vectors(7)));
}

// 16 MiB copied on the producer, then copied on the waiter after wait_stream:
// on CUDA the second copy would read a partly written buffer if the waiter
// did not wait (only the waiter is synchronised before reading).
TEST_P(StreamAnswers, AWaitingStreamSeesWhatItsProducerQueued) {
  const Device device = GetParam();
  Backend& backend = backend_for(device);
  const OwnedStream producer(device), waiter(device);
  const std::size_t count = std::size_t{4} << 20;
  const std::vector<float> values = random_values(count, 7);
  const Tensor source = Tensor::from_host(values, {count}, DType::F32, device, producer.get());
  const Tensor middle = Tensor::empty({count}, DType::F32, device, producer.get());
  const Tensor last = Tensor::empty({count}, DType::F32, device, waiter.get());
  producer.synchronize();
  const std::size_t bytes = count * sizeof(float);
  backend.copy_device_to_device(const_cast<void*>(middle.data()), source.data(), bytes, producer.get());
  backend.wait_stream(waiter.get(), producer.get());
  backend.copy_device_to_device(const_cast<void*>(last.data()), middle.data(), bytes, waiter.get());
  waiter.synchronize();
  EXPECT_EQ(last.to_host_f32(), values);
}

TEST_P(StreamAnswers, MemoryOnAnOwnedStreamIsReturnedWhenTheCacheGoes) {
  const Device device = GetParam();
  const OwnedStream stream(device);
  const std::size_t in_use = backend_for(device).memory_stats().in_use;
  {
    KVCache cache(2, stream.get());
    for (std::size_t layer = 0; layer < 2; ++layer) {
      cache.append(layer, Tensor::from_host(random_values(2 * 30 * 4, 1), {1, 2, 30, 4}, DType::F32, device),
                   Tensor::from_host(random_values(2 * 30 * 4, 2), {1, 2, 30, 4}, DType::F32, device));
    }
    EXPECT_GT(backend_for(device).memory_stats().in_use, in_use);
  }
  stream.synchronize();
  EXPECT_EQ(backend_for(device).memory_stats().in_use, in_use);
}

INSTANTIATE_TEST_SUITE_P(Devices, StreamAnswers, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
