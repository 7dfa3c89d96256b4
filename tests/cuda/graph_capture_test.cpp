// On a stream of its own a cache's decode step can be captured into a CUDA
// graph (the default stream cannot be captured at all): KVCache::append
// within reserved capacity is one kernel launch with no allocation, no
// synchronisation and no host read. Skipped, saying why, without a device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <vector>

#include "../test_support.hpp"
#include "micache/micache.hpp"

namespace micache::testing {
namespace {

// [1, 2, tokens, 8] F32 on `device` and `stream`, filled from `seed`.
Tensor tokens_on(std::size_t tokens, std::uint32_t seed, Device device, Stream stream) {
  return Tensor::from_host(random_values(2 * tokens * 8, seed), {1, 2, tokens, 8}, DType::F32, device, stream);
}

// Keys of tokens [0, first) from `seed_a` then [first, first + second) from `seed_b`, [1, 2, tokens, 8] row-major.
std::vector<float> concatenated(std::size_t first, std::uint32_t seed_a, std::size_t second, std::uint32_t seed_b) {
  const std::vector<float> a = random_values(2 * first * 8, seed_a);
  const std::vector<float> b = random_values(2 * second * 8, seed_b);
  std::vector<float> out;
  for (std::size_t head = 0; head < 2; ++head) {
    out.insert(out.end(), a.begin() + static_cast<std::ptrdiff_t>(head * first * 8),
               a.begin() + static_cast<std::ptrdiff_t>((head + 1) * first * 8));
    out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(head * second * 8),
               b.begin() + static_cast<std::ptrdiff_t>((head + 1) * second * 8));
  }
  return out;
}

TEST(GraphCapture, KVCacheAppendWithinCapacityIsCapturedThenReplayed) {
  MICACHE_REQUIRE_CUDA();
  const Device device = Device::cuda(0);
  const OwnedStream stream(device);
  KVCache cache(1, stream.get());
  cache.append(0, tokens_on(4, 1, device, stream.get()), tokens_on(4, 2, device, stream.get()));
  cache.reserve(16);
  const Tensor keys = tokens_on(1, 3, device, stream.get());
  const Tensor values = tokens_on(1, 4, device, stream.get());
  stream.synchronize();

  auto* native = static_cast<cudaStream_t>(stream.get().handle);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(native, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cache.append(0, keys, values);
  ASSERT_EQ(cudaStreamEndCapture(native, &graph), cudaSuccess);
  std::size_t nodes = 0;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 1u);  // one copy kernel for keys and values together
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, native), cudaSuccess);
  stream.synchronize();

  EXPECT_EQ(cache.seq_len(), 5u);
  expect_same_bits(cache.keys(0).to_host_f32(), concatenated(4, 1, 1, 3));
  expect_same_bits(cache.values(0).to_host_f32(), concatenated(4, 2, 1, 4));
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

}  // namespace
}  // namespace micache::testing
