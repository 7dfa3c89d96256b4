#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>

#include "cuda/head_mean.cuh"
#include "cuda/kernels.hpp"
#include "micache/detail/top_k_key.hpp"

namespace micache::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlock = kWarps * 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ inline std::uint64_t max_key(std::uint64_t a, std::uint64_t b) { return a > b ? a : b; }
__device__ inline std::uint64_t min_key(std::uint64_t a, std::uint64_t b) { return a < b ? a : b; }

// Bitonic sort of one key per lane, largest in lane 0 (15 shuffle stages).
__device__ inline std::uint64_t warp_sort_descending(std::uint64_t key, unsigned lane) {
#pragma unroll
  for (unsigned size = 2; size <= 32; size <<= 1) {
#pragma unroll
    for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
      const std::uint64_t other = __shfl_xor_sync(kFullMask, key, stride);
      const bool keep_max = ((lane & stride) == 0) == ((lane & size) == 0);
      key = keep_max ? max_key(key, other) : min_key(key, other);
    }
  }
  return key;
}

// Sorts a bitonic sequence of one key per lane, largest in lane 0 (5 stages).
__device__ inline std::uint64_t warp_merge_descending(std::uint64_t key, unsigned lane) {
#pragma unroll
  for (unsigned stride = 16; stride > 0; stride >>= 1) {
    const std::uint64_t other = __shfl_xor_sync(kFullMask, key, stride);
    key = (lane & stride) == 0 ? max_key(key, other) : min_key(key, other);
  }
  return key;
}

// Keeps the 32 largest of `queue` (sorted, largest in lane 0) and `sorted`
// (same order): lane i takes the larger of queue[i] and sorted[31-i], which
// is a bitonic sequence holding the 32 largest, then sorts it.
__device__ inline std::uint64_t warp_merge_queues(std::uint64_t queue, std::uint64_t sorted, unsigned lane) {
  const std::uint64_t reversed = __shfl_sync(kFullMask, sorted, 31 - lane);
  return warp_merge_descending(max_key(queue, reversed), lane);
}

// Memory access: one block per row; warp w reads column tiles w, w + kWarps, ...
// of 32*V columns, each lane one V-wide 16-byte load per selected head
// (coalesced), computes V head means, and inserts them into the warp's sorted
// 32-key queue only when some lane beats the current k-th key (a ballot), so
// after the first tiles most tiles cost no shuffles. The kWarps queues are
// merged through shared memory by warp 0, which writes k results.
template <DType D, int V>
__global__ void __launch_bounds__(kBlock)
    top_k_warp_kernel(const __grid_constant__ HeadMeanView view, unsigned k, std::int32_t* indices, float* weights) {
  __shared__ std::uint64_t queues[kWarps][32];
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  const std::size_t row = blockIdx.x;
  const std::size_t row_start = view.offset + row * view.row_stride;

  std::uint64_t queue = 0;
  std::uint64_t threshold = 0;
  for (std::size_t tile = static_cast<std::size_t>(warp) * 32 * V; tile < view.n_cols; tile += kWarps * 32 * V) {
    const std::size_t first = tile + static_cast<std::size_t>(lane) * V;
    float mean[V];
    if (V > 1 && first + V <= view.n_cols) {
      head_mean_vector<D, V>(view, row_start + first, mean);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float one[1] = {0.0f};
        if (first + v < view.n_cols) {
          head_mean_vector<D, 1>(view, row_start + (first + v) * view.col_stride, one);
        }
        mean[v] = one[0];
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const std::size_t column = first + v;
      const std::uint64_t key =
          column < view.n_cols ? detail::top_k_key(__float_as_uint(mean[v]), static_cast<std::uint32_t>(column)) : 0;
      if (__any_sync(kFullMask, key > threshold)) {
        queue = warp_merge_queues(queue, warp_sort_descending(key, lane), lane);
        threshold = __shfl_sync(kFullMask, queue, k - 1);
      }
    }
  }
  queues[warp][lane] = queue;
  __syncthreads();
  if (warp == 0) {
    std::uint64_t merged = queues[0][lane];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      merged = warp_merge_queues(merged, queues[w][lane], lane);
    }
    if (lane < k) {
      indices[row * k + lane] = static_cast<std::int32_t>(detail::top_k_key_index(merged));
      weights[row * k + lane] = __uint_as_float(detail::top_k_key_weight_bits(merged));
    }
  }
}

template <DType D>
struct LaunchTopKWarp {
  static cudaError_t run(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                         cudaStream_t stream) {
    const auto blocks = static_cast<unsigned>(view.n_rows);
    const auto k32 = static_cast<unsigned>(k);
    if (vector_loads_fit<D>(view)) {
      top_k_warp_kernel<D, kVectorWidth<D>><<<blocks, kBlock, 0, stream>>>(view, k32, indices, weights);
    } else {
      top_k_warp_kernel<D, 1><<<blocks, kBlock, 0, stream>>>(view, k32, indices, weights);
    }
    return cudaGetLastError();
  }
};

// ---- sort path: keys for every element, cub::DeviceSegmentedSort, take k ----

// Memory access: thread per (row, column), one element per selected head
// (coalesced along columns), one 8-byte key written.
template <DType D>
__global__ void top_k_keys_kernel(const __grid_constant__ HeadMeanView view, std::uint64_t* keys,
                                  std::int64_t* offsets) {
  const std::size_t total = view.n_rows * view.n_cols;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::size_t row = e / view.n_cols;
    const std::size_t column = e % view.n_cols;
    float mean[1];
    head_mean_vector<D, 1>(view, view.offset + row * view.row_stride + column * view.col_stride, mean);
    keys[e] = detail::top_k_key(__float_as_uint(mean[0]), static_cast<std::uint32_t>(column));
    if (column == 0) {
      offsets[row] = static_cast<std::int64_t>(e);
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    offsets[view.n_rows] = static_cast<std::int64_t>(total);
  }
}

// Memory access: thread per output (row, j), one 8-byte read of the sorted keys.
__global__ void take_k_kernel(const std::uint64_t* sorted, std::size_t n_rows, std::size_t n_cols, std::size_t k,
                              std::int32_t* indices, float* weights) {
  const std::size_t total = n_rows * k;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::uint64_t key = sorted[(e / k) * n_cols + e % k];
    indices[e] = static_cast<std::int32_t>(detail::top_k_key_index(key));
    weights[e] = __uint_as_float(detail::top_k_key_weight_bits(key));
  }
}

template <DType D>
struct LaunchKeys {
  static cudaError_t run(const HeadMeanView& view, std::uint64_t* keys, std::int64_t* offsets, cudaStream_t stream) {
    const std::size_t total = view.n_rows * view.n_cols;
    const auto blocks = static_cast<unsigned>(std::min<std::size_t>((total + 255) / 256, 1u << 16));
    top_k_keys_kernel<D><<<blocks, 256, 0, stream>>>(view, keys, offsets);
    return cudaGetLastError();
  }
};

// Scratch layout: [keys n][sorted keys n][offsets n_rows + 1][cub temp], 256-byte aligned parts.
struct SortScratch {
  std::size_t keys_bytes, offsets_bytes, cub_bytes;
  std::size_t total() const { return 2 * keys_bytes + offsets_bytes + cub_bytes; }
};

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

cudaError_t sort_scratch(const HeadMeanView& view, SortScratch& scratch) {
  const std::size_t n = view.n_rows * view.n_cols;
  scratch.keys_bytes = align256(n * sizeof(std::uint64_t));
  scratch.offsets_bytes = align256((view.n_rows + 1) * sizeof(std::int64_t));
  scratch.cub_bytes = 0;
  std::int64_t* no_offsets = nullptr;
  const cudaError_t status = cub::DeviceSegmentedSort::SortKeysDescending(
      nullptr, scratch.cub_bytes, static_cast<const std::uint64_t*>(nullptr), static_cast<std::uint64_t*>(nullptr),
      static_cast<std::int64_t>(n), static_cast<std::int64_t>(view.n_rows), no_offsets, no_offsets + 1);
  scratch.cub_bytes = align256(scratch.cub_bytes);
  return status;
}

}  // namespace

cudaError_t launch_top_k_warp(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                              cudaStream_t stream) {
  if (view.n_rows == 0) {
    return cudaSuccess;
  }
  return dispatch_dtype<LaunchTopKWarp>(view.dtype, view, k, indices, weights, stream);
}

cudaError_t sort_top_k_temp_bytes(const HeadMeanView& view, std::size_t& bytes) {
  SortScratch scratch{};
  const cudaError_t status = sort_scratch(view, scratch);
  bytes = scratch.total();
  return status;
}

cudaError_t sort_top_k(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights, void* temp,
                       std::size_t temp_bytes, cudaStream_t stream) {
  if (view.n_rows == 0) {
    return cudaSuccess;
  }
  SortScratch scratch{};
  cudaError_t status = sort_scratch(view, scratch);
  if (status != cudaSuccess) return status;
  if (temp_bytes < scratch.total()) return cudaErrorInvalidValue;
  auto* bytes = static_cast<unsigned char*>(temp);
  auto* keys = reinterpret_cast<std::uint64_t*>(bytes);
  auto* sorted = reinterpret_cast<std::uint64_t*>(bytes + scratch.keys_bytes);
  auto* offsets = reinterpret_cast<std::int64_t*>(bytes + 2 * scratch.keys_bytes);
  void* cub_temp = bytes + 2 * scratch.keys_bytes + scratch.offsets_bytes;

  status = dispatch_dtype<LaunchKeys>(view.dtype, view, keys, offsets, stream);
  if (status != cudaSuccess) return status;
  const std::size_t n = view.n_rows * view.n_cols;
  status = cub::DeviceSegmentedSort::SortKeysDescending(cub_temp, scratch.cub_bytes, keys, sorted,
                                                        static_cast<std::int64_t>(n),
                                                        static_cast<std::int64_t>(view.n_rows), offsets, offsets + 1,
                                                        stream);
  if (status != cudaSuccess) return status;
  const std::size_t outputs = view.n_rows * k;
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((outputs + 255) / 256, 1u << 16));
  take_k_kernel<<<blocks, 256, 0, stream>>>(sorted, view.n_rows, view.n_cols, k, indices, weights);
  return cudaGetLastError();
}

}  // namespace micache::cuda
