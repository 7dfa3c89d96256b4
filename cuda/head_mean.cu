#include <algorithm>

#include "cuda/head_mean.cuh"
#include "cuda/kernels.hpp"

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

}  // namespace

cudaError_t launch_head_mean(const HeadMeanView& view, float* out, cudaStream_t stream) {
  if (view.n_rows * view.n_cols == 0) {
    return cudaSuccess;
  }
  return dispatch_dtype<LaunchHeadMean>(view.dtype, view, out, stream);
}

}  // namespace micache::cuda
