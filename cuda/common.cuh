// Private, nvcc only: what every micache kernel file shares. The grid sizing
// (cuda/grid.hpp, host-safe, so plan headers and host tests use it too), the
// element types of each float dtype, the runtime-to-template dtype dispatch,
// and warp reductions.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/grid.hpp"
#include "micache/backend/detail/rounding.hpp"
#include "micache/dtype.hpp"

namespace micache::cuda {

/// Every lane of a warp, for the *_sync intrinsics.
inline constexpr unsigned kFullMask = 0xffffffffu;

/// Storage type and exact f32 promotion of one element dtype.
template <DType D>
struct ElementOf;

template <>
struct ElementOf<DType::F32> {
  using type = float;
  __device__ static float to_f32(float x) { return x; }
};

template <>
struct ElementOf<DType::F16> {
  using type = std::uint16_t;
  __device__ static float to_f32(std::uint16_t x) { return __half2float(__ushort_as_half(x)); }
};

template <>
struct ElementOf<DType::BF16> {
  using type = std::uint16_t;
  __device__ static float to_f32(std::uint16_t x) { return __uint_as_float(static_cast<std::uint32_t>(x) << 16); }
};

/// Elements of dtype D in one 16-byte load.
template <DType D>
inline constexpr int kVectorWidth = 16 / static_cast<int>(sizeof(typename ElementOf<D>::type));

/// Returns `Op<D>::run(args...)` with the runtime dtype as the template argument D
/// (float dtypes only; cudaErrorInvalidValue for others).
template <template <DType> class Op, class... Args>
cudaError_t dispatch_dtype(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::F32:
      return Op<DType::F32>::run(args...);
    case DType::F16:
      return Op<DType::F16>::run(args...);
    case DType::BF16:
      return Op<DType::BF16>::run(args...);
    case DType::I32:
    case DType::U8:
    case DType::I64:
      break;
  }
  return cudaErrorInvalidValue;
}

/// Runs `Op<Word>::run(args...)` with Word the unsigned type of `bytes`
/// bytes (a widest_unit: 16 uint4, 8 uint2, 4, 2, else 1), for kernels that
/// copy whole aligned words.
template <template <class> class Op, class... Args>
cudaError_t dispatch_word(std::size_t bytes, Args&&... args) {
  switch (bytes) {
    case 16:
      return Op<uint4>::run(args...);
    case 8:
      return Op<uint2>::run(args...);
    case 4:
      return Op<unsigned>::run(args...);
    case 2:
      return Op<unsigned short>::run(args...);
    default:
      return Op<unsigned char>::run(args...);
  }
}

/// The sum of `v` over the 32 lanes of a full warp by an xor butterfly of
/// widths 16, 8, 4, 2, 1, each add rounded once; every lane returns it.
/// detail::butterfly_sum (qjl_projection.hpp) is its host form, bit for bit.
__device__ inline float warp_sum(float v) {
#pragma unroll
  for (unsigned width = 16; width > 0; width >>= 1) v = detail::add_rn(v, __shfl_xor_sync(kFullMask, v, width));
  return v;
}

/// The largest `v` over the 32 lanes of a full warp; every lane returns it.
__device__ inline float warp_max(float v) {
#pragma unroll
  for (unsigned width = 16; width > 0; width >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, width));
  return v;
}

}  // namespace micache::cuda
