// Private, nvcc only: reading head means of a HeadMeanView inside a kernel.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "micache/backend/head_mean_view.hpp"

namespace micache::cuda {

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

}  // namespace micache::cuda
