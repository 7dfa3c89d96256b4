#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/head_mean.cuh"
#include "cuda/kernels.hpp"
#include "cuda/row_split.hpp"
#include "micache/backend/backend.hpp"

namespace micache::cuda {
namespace {

constexpr int kBlock = 256;

// Memory access: thread t owns output elements [t*V, t*V + V) of the
// flattened n_rows x n_cols grid (n_cols a multiple of V, every head's rows
// 16-byte aligned: vector_loads_fit): one 16-byte load per selected head,
// coalesced across the warp, then V floats written. One 64-bit division per
// V * heads elements read. Bytes: heads * n_rows * n_cols * size(D) read,
// 4 * n_rows * n_cols written. About 1 instruction per byte, 34 registers, no
// spills: 85-95 % of the copy roof (bench/RESULTS.md).
template <DType D, int V>
__global__ void __launch_bounds__(kBlock) head_mean_kernel(const __grid_constant__ HeadMeanView view, float* out) {
  const std::size_t total = view.n_rows * view.n_cols;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kBlock * V;
  for (std::size_t first = (static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x) * V; first < total;
       first += stride) {
    const std::size_t r = first / view.n_cols;
    float mean[V];
    head_mean_vector<D, V>(view, view.offset + r * view.row_stride + (first - r * view.n_cols), mean);
#pragma unroll
    for (int v = 0; v < V; ++v) out[first + v] = mean[v];
  }
}

template <DType D, int V>
cudaError_t launch(const HeadMeanView& view, float* out, cudaStream_t stream) {
  head_mean_kernel<D, V>
      <<<grid_blocks(view.n_rows * view.n_cols, std::size_t{kBlock} * V), kBlock, 0, stream>>>(view, out);
  return cudaGetLastError();
}

/// Columns each thread of the scalar head mean owns, kBlock apart.
constexpr int kScalarColumns = 4;

// Memory access (views vector loads cannot read: misaligned, odd lengths,
// strided columns): grid y walks rows, grid x tiles of kBlock *
// kScalarColumns columns; thread t owns columns t, t + kBlock, ... of its
// tile, so each of its kScalarColumns loads per head is coalesced across the
// warp and independent of the others (4x the loads in flight of one column
// per thread), and no index needs a division. Bytes as head_mean_kernel.
// About 2 instructions per element per head, 32 registers, no spills: 75-90 %.
template <DType D>
__global__ void __launch_bounds__(kBlock)
    head_mean_scalar_kernel(const __grid_constant__ HeadMeanView view, float* out) {
  using T = typename ElementOf<D>::type;
  const T* data = static_cast<const T*>(view.data) + view.offset;
  const float count = static_cast<float>(view.heads.count);
  for (std::size_t r = blockIdx.y; r < view.n_rows; r += gridDim.y) {
    for (std::size_t tile = static_cast<std::size_t>(blockIdx.x) * kBlock * kScalarColumns; tile < view.n_cols;
         tile += static_cast<std::size_t>(gridDim.x) * kBlock * kScalarColumns) {
      float sum[kScalarColumns] = {};
#pragma unroll 2
      for (std::uint32_t i = 0; i < view.heads.count; ++i) {
        const std::size_t head = view.heads.listed ? view.heads.index[i] : i;
        const T* row = data + head * view.head_stride + r * view.row_stride;
#pragma unroll
        for (int j = 0; j < kScalarColumns; ++j) {
          const std::size_t c = tile + j * kBlock + threadIdx.x;
          if (c < view.n_cols) sum[j] += ElementOf<D>::to_f32(row[c * view.col_stride]);
        }
      }
#pragma unroll
      for (int j = 0; j < kScalarColumns; ++j) {
        const std::size_t c = tile + j * kBlock + threadIdx.x;
        if (c < view.n_cols) out[r * view.n_cols + c] = sum[j] / count;
      }
    }
  }
}

template <DType D>
cudaError_t launch_scalar(const HeadMeanView& view, float* out, cudaStream_t stream) {
  const dim3 grid(grid_blocks(view.n_cols, std::size_t{kBlock} * kScalarColumns),
                  grid_blocks(view.n_rows, 1, kMaxGridY));
  head_mean_scalar_kernel<D><<<grid, kBlock, 0, stream>>>(view, out);
  return cudaGetLastError();
}

// Memory access (one row, latency-bound): block per tile of kRowTileColumns
// columns (grid-stride over tiles). For each chunk of kRowHeadChunk heads the
// block issues all chunk x tile element loads at once (thread e loads head
// e / 64, column e % 64: consecutive threads, consecutive columns, coalesced
// when col_stride is 1) into shared memory, then thread c adds column c's
// staged heads in head order, so the sum is head_mean_vector's, bit for bit.
// seq_k 8192 gives 128 blocks with 2048 loads in flight each, where the
// flattened kernel would give 4 blocks of 32 dependent head loads. Bytes:
// heads * n_cols * element size read once, 4 * n_cols written. 30 registers,
// 8 KiB shared, no spills; latency-bound (one DRAM round trip plus launch).
template <DType D>
__global__ void __launch_bounds__(kRowBlockThreads)
    head_mean_row_kernel(const __grid_constant__ HeadMeanView view, float* out) {
  using T = typename ElementOf<D>::type;
  __shared__ float staged[kRowHeadChunk][kRowTileColumns];
  const T* data = static_cast<const T*>(view.data) + view.offset;
  for (std::size_t tile = static_cast<std::size_t>(blockIdx.x) * kRowTileColumns; tile < view.n_cols;
       tile += static_cast<std::size_t>(gridDim.x) * kRowTileColumns) {
    float sum = 0.0f;
    for (std::uint32_t chunk = 0; chunk < view.heads.count; chunk += kRowHeadChunk) {
      const std::uint32_t chunk_heads = min(static_cast<std::uint32_t>(kRowHeadChunk), view.heads.count - chunk);
      for (std::uint32_t e = threadIdx.x; e < chunk_heads * kRowTileColumns; e += kRowBlockThreads) {
        const std::uint32_t h = e / kRowTileColumns;
        const std::uint32_t c = e % kRowTileColumns;
        const std::size_t head = view.heads.listed ? view.heads.index[chunk + h] : chunk + h;
        if (tile + c < view.n_cols) {
          staged[h][c] = ElementOf<D>::to_f32(data[head * view.head_stride + (tile + c) * view.col_stride]);
        }
      }
      __syncthreads();
      if (threadIdx.x < kRowTileColumns && tile + threadIdx.x < view.n_cols) {
        for (std::uint32_t h = 0; h < chunk_heads; ++h) sum += staged[h][threadIdx.x];
      }
      __syncthreads();
    }
    if (threadIdx.x < kRowTileColumns && tile + threadIdx.x < view.n_cols) {
      out[tile + threadIdx.x] = sum / static_cast<float>(view.heads.count);
    }
  }
}

template <DType D>
struct LaunchHeadMean {
  static cudaError_t run(const HeadMeanView& view, float* out, cudaStream_t stream) {
    // One row: the staged row kernel. A row whose length is not a multiple of V
    // would misalign the next row's vectors, so several such rows take the scalar kernel.
    constexpr int v = kVectorWidth<D>;
    if (view.n_rows == 1) {
      head_mean_row_kernel<D><<<row_tile_blocks(view.n_cols), kRowBlockThreads, 0, stream>>>(view, out);
      return cudaGetLastError();
    }
    if (vector_loads_fit<D>(view) && view.n_cols % v == 0) {
      return launch<D, v>(view, out, stream);
    }
    return launch_scalar<D>(view, out, stream);
  }
};

// Memory access: thread per (column, chunk of kColumnSumChunkRows rows); for
// each row of its chunk it reads one element per selected head, so a warp
// reads 32 consecutive columns of one row (coalesced when col_stride is 1).
// Each element is read once; the chunk's sum goes to `partial` (or straight
// to `out` when there is one chunk).
template <DType D>
__global__ void __launch_bounds__(kBlock) column_chunk_kernel(const __grid_constant__ HeadMeanView view, float* sums) {
  for (std::size_t c = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x; c < view.n_cols;
       c += static_cast<std::size_t>(gridDim.x) * kBlock) {
    for (std::size_t chunk = blockIdx.y; chunk * kColumnSumChunkRows < view.n_rows; chunk += gridDim.y) {
      const std::size_t end = std::min(view.n_rows, (chunk + 1) * kColumnSumChunkRows);
      float sum = 0.0f;
      for (std::size_t r = chunk * kColumnSumChunkRows; r < end; ++r) {
        float mean[1];
        head_mean_vector<D, 1>(view, view.offset + r * view.row_stride + c * view.col_stride, mean);
        sum += mean[0];
      }
      sums[chunk * view.n_cols + c] = sum;
    }
  }
}

// Memory access: thread per column adds its chunk sums in chunk order
// (a warp reads 32 consecutive floats per chunk).
__global__ void __launch_bounds__(kBlock)
    add_chunks_kernel(const float* partial, std::size_t chunks, std::size_t n_cols, float* out) {
  for (std::size_t c = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x; c < n_cols;
       c += static_cast<std::size_t>(gridDim.x) * kBlock) {
    float sum = 0.0f;
    for (std::size_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * n_cols + c];
    out[c] = sum;
  }
}

template <DType D>
struct LaunchColumnSums {
  static cudaError_t run(const HeadMeanView& view, float* partial, float* out, cudaStream_t stream) {
    const std::size_t chunks = column_sum_chunks(view);
    const dim3 grid(grid_blocks(view.n_cols, kBlock), grid_blocks(chunks, 1, kMaxGridY));
    column_chunk_kernel<D><<<grid, kBlock, 0, stream>>>(view, chunks > 1 ? partial : out);
    cudaError_t status = cudaGetLastError();
    if (status == cudaSuccess && chunks > 1) {
      add_chunks_kernel<<<grid.x, kBlock, 0, stream>>>(partial, chunks, view.n_cols, out);
      status = cudaGetLastError();
    }
    return status;
  }
};

}  // namespace

std::size_t column_sum_chunks(const HeadMeanView& view) {
  return (view.n_rows + kColumnSumChunkRows - 1) / kColumnSumChunkRows;
}

cudaError_t launch_column_sums(const HeadMeanView& view, float* partial, float* out, cudaStream_t stream) {
  if (view.n_cols == 0) {
    return cudaSuccess;
  }
  if (view.n_rows == 0) {
    return cudaMemsetAsync(out, 0, view.n_cols * sizeof(float), stream);
  }
  return dispatch_dtype<LaunchColumnSums>(view.dtype, view, partial, out, stream);
}

cudaError_t launch_head_mean(const HeadMeanView& view, float* out, cudaStream_t stream) {
  if (view.n_rows * view.n_cols == 0) {
    return cudaSuccess;
  }
  return dispatch_dtype<LaunchHeadMean>(view.dtype, view, out, stream);
}

}  // namespace micache::cuda
