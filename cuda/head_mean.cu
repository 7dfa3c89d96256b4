#include <algorithm>

#include "cuda/head_mean.cuh"
#include "cuda/kernels.hpp"
#include "micache/backend.hpp"

namespace micache::cuda {
namespace {

constexpr int kBlock = 256;

// Memory access: thread t owns output elements [t*V, t*V + V) of the
// flattened n_rows x n_cols grid; with V > 1 (rows contiguous, aligned) it
// issues one 16-byte load per selected head, coalesced across the warp, and
// writes V floats; with V = 1 it reads one (possibly strided) element per head.
template <DType D, int V>
__global__ void __launch_bounds__(kBlock) head_mean_kernel(const __grid_constant__ HeadMeanView view, float* out) {
  const std::size_t total = view.n_rows * view.n_cols;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kBlock * V;
  for (std::size_t first = (static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x) * V; first < total;
       first += stride) {
    const std::size_t r = first / view.n_cols;
    const std::size_t c = first % view.n_cols;
    if (V > 1 && c + V <= view.n_cols) {
      float mean[V];
      head_mean_vector<D, V>(view, view.offset + r * view.row_stride + c, mean);
#pragma unroll
      for (int v = 0; v < V; ++v) out[first + v] = mean[v];
    } else {
      for (std::size_t e = first; e < first + V && e < total; ++e) {
        float mean[1];
        head_mean_vector<D, 1>(view, view.offset + (e / view.n_cols) * view.row_stride +
                                         (e % view.n_cols) * view.col_stride, mean);
        out[e] = mean[0];
      }
    }
  }
}

template <DType D, int V>
cudaError_t launch(const HeadMeanView& view, float* out, cudaStream_t stream) {
  const std::size_t threads = (view.n_rows * view.n_cols + V - 1) / V;
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((threads + kBlock - 1) / kBlock, 1u << 20));
  head_mean_kernel<D, V><<<blocks, kBlock, 0, stream>>>(view, out);
  return cudaGetLastError();
}

template <DType D>
struct LaunchHeadMean {
  static cudaError_t run(const HeadMeanView& view, float* out, cudaStream_t stream) {
    // A row whose length is not a multiple of V would misalign the next row's
    // vectors, so several such rows take the V = 1 path.
    constexpr int v = kVectorWidth<D>;
    if (vector_loads_fit<D>(view) && (view.n_rows == 1 || view.n_cols % v == 0)) {
      return launch<D, v>(view, out, stream);
    }
    return launch<D, 1>(view, out, stream);
  }
};

// Memory access: thread per (column, chunk of kColumnSumChunkRows rows); for
// each row of its chunk it reads one element per selected head, so a warp
// reads 32 consecutive columns of one row (coalesced when col_stride is 1).
// Each element is read once; the chunk's sum goes to `partial` (or straight
// to `out` when there is one chunk).
template <DType D>
__global__ void __launch_bounds__(kBlock) column_chunk_kernel(const __grid_constant__ HeadMeanView view,
                                                              float* sums) {
  const std::size_t c = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (c >= view.n_cols) return;
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

// Memory access: thread per column adds its chunk sums in chunk order
// (a warp reads 32 consecutive floats per chunk).
__global__ void __launch_bounds__(kBlock) add_chunks_kernel(const float* partial, std::size_t chunks,
                                                            std::size_t n_cols, float* out) {
  const std::size_t c = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (c >= n_cols) return;
  float sum = 0.0f;
  for (std::size_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * n_cols + c];
  out[c] = sum;
}

template <DType D>
struct LaunchColumnSums {
  static cudaError_t run(const HeadMeanView& view, float* partial, float* out, cudaStream_t stream) {
    const std::size_t chunks = column_sum_chunks(view);
    const dim3 grid(static_cast<unsigned>((view.n_cols + kBlock - 1) / kBlock),
                    static_cast<unsigned>(std::min<std::size_t>(chunks, 65535)));
    column_chunk_kernel<D><<<grid, kBlock, 0, stream>>>(view, chunks > 1 ? partial : out);
    if (chunks > 1) {
      add_chunks_kernel<<<grid.x, kBlock, 0, stream>>>(partial, chunks, view.n_cols, out);
    }
    return cudaGetLastError();
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
