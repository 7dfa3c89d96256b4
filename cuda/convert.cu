#include "cuda/common.cuh"
#include "cuda/kernels.hpp"

namespace micache::cuda {
namespace {

constexpr int kBlock = 256;

template <DType D>
struct StoreOf;

template <>
struct StoreOf<DType::F32> {
  __device__ static float from_f32(float x) { return x; }
};

template <>
struct StoreOf<DType::F16> {
  __device__ static std::uint16_t from_f32(float x) { return f32_to_f16(x); }
};

template <>
struct StoreOf<DType::BF16> {
  __device__ static std::uint16_t from_f32(float x) { return f32_to_bf16(x); }
};

// Memory access: grid-stride over elements, one coalesced read of the source
// type and one write of the target type per element. Widening and rounding
// use the same bit-level conversions as the CPU backend (dtype.hpp), so
// results match it bit for bit, NaN payloads included.
template <DType S, DType T>
__global__ void __launch_bounds__(kBlock) convert_kernel(const void* src, void* dst, std::size_t count) {
  auto* out = static_cast<typename ElementOf<T>::type*>(dst);
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kBlock;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x; i < count; i += stride) {
    // dtype.hpp's integer widening, as CpuBackend::convert: __half2float would give
    // the canonical NaN for every F16 NaN, losing its sign and payload.
    out[i] = StoreOf<T>::from_f32(load_as_f32(src, S, i));
  }
}

template <DType S>
struct LaunchConvert {
  template <DType T>
  struct To {
    static cudaError_t run(const void* src, void* dst, std::size_t count, cudaStream_t stream) {
      convert_kernel<S, T><<<grid_blocks(count, kBlock), kBlock, 0, stream>>>(src, dst, count);
      return cudaGetLastError();
    }
  };
  static cudaError_t run(const void* src, void* dst, DType dst_dtype, std::size_t count, cudaStream_t stream) {
    return dispatch_dtype<To>(dst_dtype, src, dst, count, stream);
  }
};

}  // namespace

cudaError_t launch_convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                           cudaStream_t stream) {
  if (count == 0) {
    return cudaSuccess;
  }
  if (src_dtype == dst_dtype) {
    return cudaMemcpyAsync(dst, src, count * dtype_size(src_dtype), cudaMemcpyDeviceToDevice, stream);
  }
  return dispatch_dtype<LaunchConvert>(src_dtype, src, dst, dst_dtype, count, stream);
}

}  // namespace micache::cuda
