// Top-k of head means for k <= kSelectMaxK: warp-level selection up to
// kWarpTopKMax, radix select above (the sort of each row beyond is
// top_k_sort.cu, the only top-k file that needs CUB).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/head_mean.cuh"
#include "cuda/kernels.hpp"
#include "cuda/radix_select.hpp"
#include "cuda/row_split.hpp"
#include "micache/backend/detail/top_k_key.hpp"

namespace micache::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlock = kWarps * 32;

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

// A warp's sorted queue of its 32 best keys and the k-th of them. A new key
// per lane costs shuffles only when some lane beats the k-th (a ballot), so
// after the first tiles most tiles cost none.
struct WarpQueue {
  std::uint64_t queue = 0;
  std::uint64_t threshold = 0;

  __device__ void offer(std::uint64_t key, unsigned k, unsigned lane) {
    if (__any_sync(kFullMask, key > threshold)) {
      queue = warp_merge_queues(queue, warp_sort_descending(key, lane), lane);
      threshold = __shfl_sync(kFullMask, queue, k - 1);
    }
  }
};

// Merges the block's kWarps queues through shared memory; warp 0 returns the
// merged queue (lane j holds the j-th best), other warps an unspecified key.
__device__ inline std::uint64_t merge_block_queues(const WarpQueue& mine, std::uint64_t (&queues)[kWarps][32],
                                                   unsigned warp, unsigned lane) {
  queues[warp][lane] = mine.queue;
  __syncthreads();
  std::uint64_t merged = queues[0][lane];
  if (warp == 0) {
#pragma unroll
    for (int w = 1; w < kWarps; ++w) merged = warp_merge_queues(merged, queues[w][lane], lane);
  }
  __syncthreads();
  return merged;
}

// Memory access: block (row, segment) reads the columns of its segment in
// tiles of 32*V columns per warp (warp w takes tiles w, w + kWarps, ...),
// each lane one V-wide 16-byte load per selected head (coalesced), computes V
// head means and offers their keys to the warp's queue. The block's queues
// merge in shared memory; warp 0 writes k results (one segment) or k keys to
// `segment_keys` (several). Bytes: heads * columns * element size read once.
// 40-48 registers (4 bytes spilled in the V = 1 variants), 1 KiB shared;
// 70-90 % of the copy roof with >= 2 blocks per SM, one-row queries spread
// over about 2 * SMs blocks by the split.
template <DType D, int V>
__global__ void __launch_bounds__(kBlock)
    top_k_warp_kernel(const __grid_constant__ HeadMeanView view, unsigned k, TopKSplit split, std::int32_t* indices,
                      float* weights, std::uint64_t* segment_keys) {
  __shared__ std::uint64_t queues[kWarps][32];
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  const std::size_t segment = blockIdx.y;
  const std::size_t begin = segment * split.segment_columns;
  const std::size_t end = std::min(view.n_cols, begin + split.segment_columns);
  for (std::size_t row = blockIdx.x; row < view.n_rows; row += gridDim.x) {
    const std::size_t row_start = view.offset + row * view.row_stride;
    WarpQueue queue;
    for (std::size_t tile = begin + static_cast<std::size_t>(warp) * 32 * V; tile < end; tile += kWarps * 32 * V) {
      const std::size_t first = tile + static_cast<std::size_t>(lane) * V;
      float mean[V];
      if (V > 1 && first + V <= end) {
        head_mean_vector<D, V>(view, row_start + first, mean);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          float one[1] = {0.0f};
          if (first + v < end) head_mean_vector<D, 1>(view, row_start + (first + v) * view.col_stride, one);
          mean[v] = one[0];
        }
      }
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const std::size_t column = first + v;
        const std::uint64_t key =
            column < end ? detail::top_k_key(__float_as_uint(mean[v]), static_cast<std::uint32_t>(column)) : 0;
        queue.offer(key, k, lane);
      }
    }
    const std::uint64_t merged = merge_block_queues(queue, queues, warp, lane);
    if (warp == 0 && lane < k) {
      if (split.segments == 1) {
        detail::store_top_k(merged, row * k + lane, indices, weights);
      } else {
        segment_keys[(row * split.segments + segment) * k + lane] = merged;
      }
    }
  }
}

// Memory access: block per row reads the row's segments * k candidate keys
// once (coalesced, warp w takes tiles of 32 keys w, w + kWarps, ...), offers
// them to the warp queues, merges and writes k results. Bytes: 8 * segments * k
// per row, from L2 (the segment kernel just wrote them).
__global__ void __launch_bounds__(kBlock)
    merge_segments_kernel(const std::uint64_t* segment_keys, std::size_t n_rows, std::size_t candidates, unsigned k,
                          std::int32_t* indices, float* weights) {
  __shared__ std::uint64_t queues[kWarps][32];
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  for (std::size_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
    const std::uint64_t* keys = segment_keys + row * candidates;
    WarpQueue queue;
    for (std::size_t tile = static_cast<std::size_t>(warp) * 32; tile < candidates; tile += kWarps * 32) {
      const std::size_t e = tile + lane;
      queue.offer(e < candidates ? keys[e] : 0, k, lane);
    }
    const std::uint64_t merged = merge_block_queues(queue, queues, warp, lane);
    if (warp == 0 && lane < k) detail::store_top_k(merged, row * k + lane, indices, weights);
  }
}

template <DType D>
struct LaunchTopKWarp {
  static cudaError_t run(const HeadMeanView& view, std::size_t k, const TopKSplit& split, std::int32_t* indices,
                         float* weights, std::uint64_t* segment_keys, cudaStream_t stream) {
    const dim3 grid(grid_blocks(view.n_rows, 1), static_cast<unsigned>(split.segments));
    const auto k32 = static_cast<unsigned>(k);
    if (vector_loads_fit<D>(view)) {
      top_k_warp_kernel<D, kVectorWidth<D>>
          <<<grid, kBlock, 0, stream>>>(view, k32, split, indices, weights, segment_keys);
    } else {
      top_k_warp_kernel<D, 1><<<grid, kBlock, 0, stream>>>(view, k32, split, indices, weights, segment_keys);
    }
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess || split.segments == 1) return status;
    merge_segments_kernel<<<grid_blocks(view.n_rows, 1), kBlock, 0, stream>>>(
        segment_keys, view.n_rows, split.segments * k, k32, indices, weights);
    return cudaGetLastError();
  }
};

template <DType D>
struct TileColumns {
  static cudaError_t run(const HeadMeanView& view, std::size_t& columns) {
    columns = static_cast<std::size_t>(kWarps) * 32 * (vector_loads_fit<D>(view) ? kVectorWidth<D> : 1);
    return cudaSuccess;
  }
};

TopKSplit split_of(const HeadMeanView& view, int sms) {
  std::size_t tile = 0;
  if (dispatch_dtype<TileColumns>(view.dtype, view, tile) != cudaSuccess || view.n_rows == 0 || view.n_cols == 0) {
    return TopKSplit{1, view.n_cols};
  }
  return plan_top_k_split(view.n_rows, view.n_cols, tile, static_cast<std::size_t>(std::max(sms, 1)));
}

// ---- radix select: kWarpTopKMax < k <= kSelectMaxK ----

// Memory access: block per row (grid-stride). Thread t computes the keys of
// columns t, t + kSelectThreads, ... (one element per selected head each,
// coalesced across threads) into shared memory (rows up to
// kSelectSharedKeys columns) or the block's global slice; eight passes over
// those keys build 8-bit digit histograms (shared atomics) and narrow the
// prefix to the k-th largest key (select_bucket); the k keys at or above it
// are gathered and sorted by a bitonic network in shared memory; k results
// written. Bytes: heads * n_cols * element size read once from DRAM; the
// passes read the keys from shared memory (or L2 for long rows). 30 registers,
// no spills, up to 41 KiB of shared memory; DRAM traffic is the input once:
// 50-80 % of the copy roof with >= 2 rows per SM.
template <DType D>
__global__ void __launch_bounds__(kSelectThreads)
    top_k_select_kernel(const __grid_constant__ HeadMeanView view, unsigned k, std::uint64_t* global_keys,
                        std::int32_t* indices, float* weights) {
  extern __shared__ __align__(16) std::uint64_t shared_keys[];
  __shared__ std::uint32_t histogram[kSelectBuckets];
  __shared__ unsigned chosen_count;
  const bool in_shared = view.n_cols <= kSelectSharedKeys;
  std::uint64_t* keys = in_shared ? shared_keys : global_keys + static_cast<std::size_t>(blockIdx.x) * view.n_cols;
  std::uint64_t* chosen = shared_keys + (in_shared ? kSelectSharedKeys : 0);
  const std::uint32_t width = select_sort_width(k);
  for (std::size_t row = blockIdx.x; row < view.n_rows; row += gridDim.x) {
    for (std::size_t c = threadIdx.x; c < view.n_cols; c += kSelectThreads) {
      float mean[1];
      head_mean_vector<D, 1>(view, view.offset + row * view.row_stride + c * view.col_stride, mean);
      keys[c] = detail::top_k_key(__float_as_uint(mean[0]), static_cast<std::uint32_t>(c));
    }
    std::uint64_t prefix = 0;
    std::size_t rank = k;
    for (unsigned pass = 0; pass < kSelectPasses; ++pass) {
      for (unsigned d = threadIdx.x; d < kSelectBuckets; d += kSelectThreads) histogram[d] = 0;
      __syncthreads();
      for (std::size_t c = threadIdx.x; c < view.n_cols; c += kSelectThreads) {
        const std::uint64_t key = keys[c];
        if (matches_prefix(key, prefix, pass)) atomicAdd(&histogram[select_digit(key, pass)], 1u);
      }
      __syncthreads();
      const SelectStep step = select_bucket(histogram, rank);
      prefix = with_digit(prefix, pass, step.digit);
      rank = step.k;
      __syncthreads();
    }
    for (std::uint32_t i = threadIdx.x; i < width; i += kSelectThreads) chosen[i] = 0;
    if (threadIdx.x == 0) chosen_count = 0;
    __syncthreads();
    for (std::size_t c = threadIdx.x; c < view.n_cols; c += kSelectThreads) {
      const std::uint64_t key = keys[c];
      if (key >= prefix) chosen[atomicAdd(&chosen_count, 1u)] = key;
    }
    __syncthreads();
    for (std::uint32_t size = 2; size <= width; size <<= 1) {
      for (std::uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
        for (std::uint32_t i = threadIdx.x; i < width; i += kSelectThreads) {
          const std::uint32_t j = i ^ stride;
          if (j > i) {
            const std::uint64_t a = chosen[i];
            const std::uint64_t b = chosen[j];
            const bool descending = (i & size) == 0;
            if (descending ? a < b : a > b) {
              chosen[i] = b;
              chosen[j] = a;
            }
          }
        }
        __syncthreads();
      }
    }
    for (std::uint32_t j = threadIdx.x; j < k; j += kSelectThreads)
      detail::store_top_k(chosen[j], row * k + j, indices, weights);
    __syncthreads();
  }
}

std::size_t select_blocks(const HeadMeanView& view) {
  return view.n_cols <= kSelectSharedKeys ? view.n_rows : std::min(view.n_rows, kSelectGlobalBlocks);
}

template <DType D>
struct LaunchTopKSelect {
  static cudaError_t run(const HeadMeanView& view, std::size_t k, std::uint64_t* global_keys, std::int32_t* indices,
                         float* weights, cudaStream_t stream) {
    const std::size_t shared =
        ((view.n_cols <= kSelectSharedKeys ? kSelectSharedKeys : 0) + select_sort_width(k)) * sizeof(std::uint64_t);
    top_k_select_kernel<D><<<grid_blocks(select_blocks(view), 1), kSelectThreads, shared, stream>>>(
        view, static_cast<unsigned>(k), global_keys, indices, weights);
    return cudaGetLastError();
  }
};

}  // namespace

std::size_t top_k_warp_scratch_bytes(const HeadMeanView& view, std::size_t k, int sms) {
  const TopKSplit split = split_of(view, sms);
  return split.segments > 1 ? view.n_rows * split.segments * k * sizeof(std::uint64_t) : 0;
}

cudaError_t launch_top_k_warp(const HeadMeanView& view, std::size_t k, int sms, void* scratch, std::int32_t* indices,
                              float* weights, cudaStream_t stream) {
  if (view.n_rows == 0) return cudaSuccess;
  return dispatch_dtype<LaunchTopKWarp>(view.dtype, view, k, split_of(view, sms), indices, weights,
                                        static_cast<std::uint64_t*>(scratch), stream);
}

std::size_t top_k_select_scratch_bytes(const HeadMeanView& view) {
  if (view.n_cols <= kSelectSharedKeys) return 0;
  return std::size_t{grid_blocks(select_blocks(view), 1)} * view.n_cols * sizeof(std::uint64_t);
}

cudaError_t launch_top_k_select(const HeadMeanView& view, std::size_t k, void* scratch, std::int32_t* indices,
                                float* weights, cudaStream_t stream) {
  if (view.n_rows == 0) return cudaSuccess;
  return dispatch_dtype<LaunchTopKSelect>(view.dtype, view, k, static_cast<std::uint64_t*>(scratch), indices, weights,
                                          stream);
}

}  // namespace micache::cuda
