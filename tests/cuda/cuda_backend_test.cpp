// CudaBackend's error attribution and memory pool, on a device (skipped, saying
// why, without one).
//
// Errors: an error that the caller's own code left pending in the CUDA runtime
// is not reported by micache's next kernel, and an error met where micache
// cannot throw (a failed deallocation) is cleared and counted rather than
// surfacing at the next, correct launch. These tests provoke CUDA API errors
// on purpose: compute-sanitizer reports them as API errors (run them outside
// the sanitizer, or with --report-api-errors no).
//
// Pool: micache's own pool keeps freed memory across synchronisations (its
// release threshold is UINT64_MAX), `reserved` is that pool's, shrink_to_fit
// returns the free part to the system, the device's default pool is never
// touched, and MICACHE_CUDA_ALLOCATOR=plain still gives plain cudaMalloc.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../test_support.hpp"
#include "micache/backend/backends.hpp"
#include "micache/micache.hpp"

namespace micache::testing {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

const Device kCuda = Device::cuda(0);

// [1, heads, tokens, dim] F32 on `device`, filled from `seed`.
Tensor kv_tokens(std::size_t heads, std::size_t tokens, std::size_t dim, std::uint32_t seed, Device device) {
  return Tensor::from_host(random_values(heads * tokens * dim, seed), {1, heads, tokens, dim}, DType::F32, device);
}

// Leaves cudaErrorInvalidDevice pending in the runtime, as a caller's
// unchecked call would (not sticky: only an invalid argument).
void leave_an_error_pending() {
  ASSERT_EQ(cudaSetDevice(-1), cudaErrorInvalidDevice);
  ASSERT_EQ(cudaPeekAtLastError(), cudaErrorInvalidDevice);
}

bool plain_allocator() {
  const char* mode = std::getenv("MICACHE_CUDA_ALLOCATOR");
  return mode != nullptr && std::string(mode) == "plain";
}

// Skips the running test without a device, or when micache keeps no pool there.
#define MICACHE_REQUIRE_POOL()                                                                    \
  do {                                                                                            \
    MICACHE_REQUIRE_CUDA();                                                                       \
    if (plain_allocator()) GTEST_SKIP() << "MICACHE_CUDA_ALLOCATOR=plain: micache keeps no pool"; \
  } while (0)

// Sets (or, given nullopt, unsets) an environment variable for the scope, restoring it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    set(value);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() { set(old_); }

 private:
  void set(const std::optional<std::string>& value) const {
    if (value) {
      setenv(name_, value->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

  const char* name_;
  std::optional<std::string> old_;
};

// ---- errors ---------------------------------------------------------------

TEST(CudaErrors, AnErrorTheCallerLeftPendingIsNotReportedByTheNextCacheKernel) {
  MICACHE_REQUIRE_CUDA();
  KVCache cache(1);
  const Tensor keys = kv_tokens(2, 8, 16, 1, kCuda);
  const Tensor values = kv_tokens(2, 8, 16, 2, kCuda);
  ASSERT_NO_FATAL_FAILURE(leave_an_error_pending());
  EXPECT_NO_THROW(cache.append(0, keys, values));  // copy_tokens: a plain launch
  expect_same_bits(cache.keys(0).to_host_f32(), keys.to_host_f32());

  // 130 query rows: three column-sum chunks, so the kernel runs with scratch.
  const std::vector<float> rows = random_softmax_rows(4 * 130, 40, 3);
  AttentionCache attention;
  attention.push(Tensor::from_host(rows, {1, 4, 130, 40}, DType::F32, kCuda));
  AttentionCache reference;
  reference.push(Tensor::from_host(rows, {1, 4, 130, 40}, DType::F32));
  ASSERT_NO_FATAL_FAILURE(leave_an_error_pending());
  Tensor received;
  EXPECT_NO_THROW(received = attention.attention_received(0));
  expect_same_bits(received.to_host_f32(), reference.attention_received(0).to_host_f32());
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
}

TEST(CudaErrors, AFailedDeallocationIsClearedAndCountedSoTheNextKernelSucceeds) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(kCuda);
  const Tensor keys = kv_tokens(2, 8, 16, 4, kCuda);
  const Tensor values = kv_tokens(2, 8, 16, 5, kCuda);
  const std::size_t deferred = backend.deferred_errors();
  const std::size_t in_use = backend.memory_stats().in_use;

  // No allocation lives at 0x100: cudaFreeAsync (cudaFree with the plain
  // allocator) refuses it with cudaErrorInvalidValue, inside a noexcept call.
  backend.deallocate(reinterpret_cast<void*>(std::uintptr_t{0x100}), 0);
  EXPECT_EQ(backend.deferred_errors(), deferred + 1);
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);  // cleared where it happened
  EXPECT_EQ(backend.memory_stats().in_use, in_use);

  KVCache cache(1);
  EXPECT_NO_THROW(cache.append(0, keys, values));
  expect_same_bits(cache.values(0).to_host_f32(), values.to_host_f32());
}

// ---- pool -----------------------------------------------------------------

TEST(CudaPool, FreedMemoryStaysReservedAcrossASynchronisationUntilReleased) {
  MICACHE_REQUIRE_POOL();
  Backend& backend = backend_for(kCuda);
  backend.release_unused_memory();
  const std::size_t base = backend.memory_stats().reserved;
  std::size_t held = 0;
  {
    const Tensor big = Tensor::empty({32 * kMiB}, DType::F32, kCuda);  // 128 MiB
    held = backend.memory_stats().reserved;
    EXPECT_GE(held, backend.memory_stats().in_use);
    EXPECT_GE(held, 128 * kMiB);
  }
  backend.synchronize({});
  EXPECT_EQ(backend.memory_stats().reserved, held);  // the default pool would have unmapped it here

  const std::size_t trims = backend.memory_stats().trims;
  backend.release_unused_memory();
  EXPECT_LE(backend.memory_stats().reserved, base);
  EXPECT_EQ(backend.memory_stats().trims, trims + 1);
}

TEST(CudaPool, ShrinkToFitReturnsTheFreedRingsToTheSystem) {
  MICACHE_REQUIRE_POOL();
  Backend& backend = backend_for(kCuda);
  const Tensor keys = kv_tokens(8, 16, 1024, 6, kCuda);
  const Tensor values = kv_tokens(8, 16, 1024, 7, kCuda);
  KVCache cache(1);
  cache.append(0, keys, values);
  cache.reserve(4096);  // two rings of [1, 8, 4096, 1024] F32: 256 MiB
  backend.synchronize({});
  const std::size_t held = backend.memory_stats().reserved;

  cache.shrink_to_fit();
  EXPECT_EQ(cache.capacity(), 16u);
  EXPECT_LE(backend.memory_stats().reserved + 192 * kMiB, held);
  expect_same_bits(cache.keys(0).to_host_f32(), keys.to_host_f32());
  expect_same_bits(cache.values(0).to_host_f32(), values.to_host_f32());
}

TEST(CudaPool, TheDevicesDefaultPoolIsLeftAlone) {
  MICACHE_REQUIRE_POOL();
  Backend& backend = backend_for(kCuda);
  cudaMemPool_t default_pool = nullptr;
  ASSERT_EQ(cudaDeviceGetDefaultMemPool(&default_pool, 0), cudaSuccess);
  std::uint64_t threshold = 1;
  ASSERT_EQ(cudaMemPoolGetAttribute(default_pool, cudaMemPoolAttrReleaseThreshold, &threshold), cudaSuccess);
  EXPECT_EQ(threshold, 0u);  // micache changed no attribute of it
  std::uint64_t before = 0;
  ASSERT_EQ(cudaMemPoolGetAttribute(default_pool, cudaMemPoolAttrUsedMemCurrent, &before), cudaSuccess);

  const Tensor big = Tensor::empty({16 * kMiB}, DType::F32, kCuda);  // 64 MiB from micache's pool
  std::uint64_t during = 0;
  ASSERT_EQ(cudaMemPoolGetAttribute(default_pool, cudaMemPoolAttrUsedMemCurrent, &during), cudaSuccess);
  EXPECT_EQ(during, before);
  EXPECT_GE(backend.memory_stats().reserved, 64 * kMiB);
}

TEST(CudaPool, ThePlainAllocatorReservesExactlyWhatIsInUse) {
  MICACHE_REQUIRE_CUDA();
  const ScopedEnv plain("MICACHE_CUDA_ALLOCATOR", "plain");
  const std::unique_ptr<Backend> backend = cuda::make_backend(0);
  void* block = backend->allocate(3 * kMiB);
  EXPECT_EQ(backend->memory_stats().in_use, 3 * kMiB);
  EXPECT_EQ(backend->memory_stats().reserved, 3 * kMiB);
  backend->deallocate(block, 3 * kMiB);
  backend->release_unused_memory();  // nothing pooled: synchronises only
  EXPECT_EQ(backend->memory_stats().reserved, 0u);
}

TEST(CudaPool, ABackendDestroysItsPoolWithoutAnError) {
  MICACHE_REQUIRE_CUDA();
  const ScopedEnv pooled("MICACHE_CUDA_ALLOCATOR", std::nullopt);
  const std::size_t deferred = backend_for(kCuda).deferred_errors();
  {
    const std::unique_ptr<Backend> backend = cuda::make_backend(0);
    void* block = backend->allocate(kMiB);
    EXPECT_GE(backend->memory_stats().reserved, kMiB);
    backend->deallocate(block, kMiB);
    backend->synchronize({});
  }
  EXPECT_EQ(backend_for(kCuda).deferred_errors(), deferred);
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
}

}  // namespace
}  // namespace micache::testing
