// Private, nvcc only: reading head means of a HeadMeanView inside a kernel.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "micache/backend/head_mean_view.hpp"

namespace micache::cuda {

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

/// Head means of V consecutive elements starting at element `index` of the
/// head-0 plane (so `index` already includes offset, row and column): for
/// each selected head in order, one V-wide load, then f32 adds. When V > 1 the
/// caller guarantees 16-byte alignment of every head's V elements.
template <DType D, int V>
__device__ inline void head_mean_vector(const HeadMeanView& view, std::size_t index, float (&mean)[V]) {
  using T = typename ElementOf<D>::type;
  struct alignas(sizeof(T) * V) Pack {
    T v[V];
  };
  const T* base = static_cast<const T*>(view.data) + index;
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = 0.0f;
#pragma unroll 4
  for (std::uint32_t i = 0; i < view.heads.count; ++i) {
    const std::size_t head = view.heads.listed ? view.heads.index[i] : i;
    const Pack pack = *reinterpret_cast<const Pack*>(base + head * view.head_stride);
#pragma unroll
    for (int v = 0; v < V; ++v) mean[v] += ElementOf<D>::to_f32(pack.v[v]);
  }
  const float count = static_cast<float>(view.heads.count);
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = mean[v] / count;
}

/// True when rows of `view` can be read V elements at a time with 16-byte
/// loads: unit column stride, and offset, row stride, head stride and the
/// data address all multiples of the vector.
template <DType D>
inline bool vector_loads_fit(const HeadMeanView& view) {
  constexpr std::size_t v = kVectorWidth<D>;
  const auto address = reinterpret_cast<std::uintptr_t>(view.data);
  return view.col_stride == 1 && view.offset % v == 0 && view.head_stride % v == 0 &&
         (view.n_rows == 1 || view.row_stride % v == 0) && address % 16 == 0;
}

/// Returns `Op<D>::run(args...)` with the runtime dtype as the template argument D
/// (float dtypes only; cudaErrorInvalidValue for others).
template <template <DType> class Op, class... Args>
cudaError_t dispatch_dtype(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::F32: return Op<DType::F32>::run(args...);
    case DType::F16: return Op<DType::F16>::run(args...);
    case DType::BF16: return Op<DType::BF16>::run(args...);
    case DType::I32:
    case DType::U8: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace micache::cuda
