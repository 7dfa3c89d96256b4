// nvcc-built tests: the helpers shared by host and device code (dtype
// conversions, top-k keys, the QJL projection's order) give the same bits
// when run in a kernel as on the host. Skipped, saying why, when no CUDA
// device can be used.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "cuda/common.cuh"
#include "micache/backend/detail/qjl_projection.hpp"
#include "micache/backend/detail/top_k_key.hpp"
#include "micache/dtype.hpp"

namespace micache {
namespace {

// Every 4099th f32 bit pattern (covers each exponent and many mantissas), plus the specials.
std::vector<float> sweep_floats() {
  std::vector<float> values;
  for (std::uint64_t bits = 0; bits <= 0xffffffffull; bits += 4099) {
    values.push_back(bits_float(static_cast<std::uint32_t>(bits)));
  }
  for (float special : {0.0f, -0.0f, 65504.0f, 65520.0f, std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    values.push_back(special);
  }
  return values;
}

__global__ void device_conversions(const float* in, std::size_t n, std::uint16_t* f16, std::uint16_t* bf16,
                                   std::uint32_t* f16_back, std::uint64_t* keys) {
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    f16[i] = f32_to_f16(in[i]);
    bf16[i] = f32_to_bf16(in[i]);
    f16_back[i] = float_bits(f16_to_f32(static_cast<std::uint16_t>(i)));
    keys[i] = detail::top_k_key(float_bits(in[i]), static_cast<std::uint32_t>(i));
  }
}

template <class T>
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t n) : size(n) { EXPECT_EQ(cudaMalloc(&ptr, n * sizeof(T)), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> to_host() const {
    std::vector<T> host(size);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr, size * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  T* ptr = nullptr;
  std::size_t size;
};

TEST(DeviceFunctions, ConversionsAndKeysMatchTheHostBitForBit) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    GTEST_SKIP() << "no CUDA device: the kernel-side helpers cannot run here";
  }
  const std::vector<float> inputs = sweep_floats();
  const std::size_t n = inputs.size();
  DeviceBuffer<float> in(n);
  DeviceBuffer<std::uint16_t> f16(n), bf16(n);
  DeviceBuffer<std::uint32_t> f16_back(n);
  DeviceBuffer<std::uint64_t> keys(n);
  ASSERT_EQ(cudaMemcpy(in.ptr, inputs.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  device_conversions<<<256, 256>>>(in.ptr, n, f16.ptr, bf16.ptr, f16_back.ptr, keys.ptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  const auto got_f16 = f16.to_host();
  const auto got_bf16 = bf16.to_host();
  const auto got_back = f16_back.to_host();
  const auto got_keys = keys.to_host();
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(got_f16[i], f32_to_f16(inputs[i])) << "f16 of bits " << std::hex << float_bits(inputs[i]);
    ASSERT_EQ(got_bf16[i], f32_to_bf16(inputs[i])) << "bf16 of bits " << std::hex << float_bits(inputs[i]);
    ASSERT_EQ(got_back[i], float_bits(f16_to_f32(static_cast<std::uint16_t>(i)))) << "f16 widening of " << i;
    ASSERT_EQ(got_keys[i], detail::top_k_key(float_bits(inputs[i]), static_cast<std::uint32_t>(i)));
  }
}

// A warp per row, as the prepare kernel projects a query: lane partials, then warp_sum.
__global__ void device_projection(const float* matrix, std::uint32_t m, std::uint32_t p, const float* x, float* out) {
  const unsigned lane = threadIdx.x % 32;
  for (std::uint32_t j = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; j < m; j += gridDim.x * (blockDim.x / 32)) {
    const float sum = cuda::warp_sum(detail::lane_partial_dot(matrix + std::size_t{j} * p, x, p, lane));
    if (lane == 0) out[j] = sum;
  }
}

TEST(DeviceFunctions, QjlProjectionMatchesTheHostBitForBit) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    GTEST_SKIP() << "no CUDA device: the kernel-side helpers cannot run here";
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  for (const std::uint32_t p : {2u, 32u, 128u, 4096u}) {
    const std::uint32_t m = 48;
    std::vector<float> matrix(std::size_t{m} * p), x(p);
    for (float& v : matrix) v = uniform(rng);
    for (float& v : x) v = uniform(rng);
    std::vector<float> expected(m);
    detail::project_query(matrix.data(), m, p, x.data(), expected.data());
    DeviceBuffer<float> device_matrix(matrix.size()), device_x(p), device_out(m);
    ASSERT_EQ(cudaMemcpy(device_matrix.ptr, matrix.data(), matrix.size() * sizeof(float), cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(device_x.ptr, x.data(), p * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    device_projection<<<4, 128>>>(device_matrix.ptr, m, p, device_x.ptr, device_out.ptr);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> got = device_out.to_host();
    for (std::uint32_t j = 0; j < m; ++j) {
      ASSERT_EQ(float_bits(got[j]), float_bits(expected[j])) << "p " << p << ", row " << j;
    }
  }
}

}  // namespace
}  // namespace micache
