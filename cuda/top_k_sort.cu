// Top-k of head means for any k by a full sort of each row:
// cub::DeviceSegmentedRadixSort on detail::top_k_key keys (kernels.hpp: sort_top_k).
#include <algorithm>
#include <climits>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "cuda/common.cuh"
#include "cuda/head_mean.cuh"
#include "cuda/kernels.hpp"
#include "micache/backend/detail/top_k_key.hpp"

namespace micache::cuda {
namespace {

// Memory access: thread per (row, column) of a batch of rows, one element per
// selected head (coalesced along columns), one 8-byte key written; the
// thread of column 0 writes its row's offset.
template <DType D>
__global__ void top_k_keys_kernel(const __grid_constant__ HeadMeanView view, std::size_t first_row, std::size_t rows,
                                  std::uint64_t* keys, int* offsets) {
  const std::size_t total = rows * view.n_cols;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::size_t row = e / view.n_cols;
    const std::size_t column = e - row * view.n_cols;
    float mean[1];
    head_mean_vector<D, 1>(view, view.offset + (first_row + row) * view.row_stride + column * view.col_stride, mean);
    keys[e] = detail::top_k_key(__float_as_uint(mean[0]), static_cast<std::uint32_t>(column));
    if (column == 0) offsets[row] = static_cast<int>(e);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) offsets[rows] = static_cast<int>(total);
}

// Memory access: thread per output (row, j) of the batch, one 8-byte read of the sorted keys.
__global__ void take_k_kernel(const std::uint64_t* sorted, std::size_t rows, std::size_t n_cols, std::size_t k,
                              std::int32_t* indices, float* weights) {
  const std::size_t total = rows * k;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::size_t row = e / k;
    detail::store_top_k(sorted[row * n_cols + (e - row * k)], e, indices, weights);
  }
}

template <DType D>
struct LaunchKeys {
  static cudaError_t run(const HeadMeanView& view, std::size_t first_row, std::size_t rows, std::uint64_t* keys,
                         int* offsets, cudaStream_t stream) {
    top_k_keys_kernel<D>
        <<<grid_blocks(rows * view.n_cols, 256), 256, 0, stream>>>(view, first_row, rows, keys, offsets);
    return cudaGetLastError();
  }
};

// Rows per sort: CUB's segmented radix sort counts items in int.
std::size_t sort_batch_rows(const HeadMeanView& view) {
  return std::max<std::size_t>(1, std::min(view.n_rows, static_cast<std::size_t>(INT_MAX) / view.n_cols));
}

// Scratch layout: [keys][sorted keys][offsets][cub temp] for one batch of rows, 256-byte aligned parts.
struct SortScratch {
  std::size_t keys_bytes, offsets_bytes, cub_bytes;
  std::size_t total() const { return 2 * keys_bytes + offsets_bytes + cub_bytes; }
};

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

cudaError_t sort_scratch(const HeadMeanView& view, SortScratch& scratch) {
  const std::size_t rows = sort_batch_rows(view);
  const std::size_t n = rows * view.n_cols;
  scratch.keys_bytes = align256(n * sizeof(std::uint64_t));
  scratch.offsets_bytes = align256((rows + 1) * sizeof(int));
  scratch.cub_bytes = 0;
  const int* no_offsets = nullptr;
  const cudaError_t status = cub::DeviceSegmentedRadixSort::SortKeysDescending(
      nullptr, scratch.cub_bytes, static_cast<const std::uint64_t*>(nullptr), static_cast<std::uint64_t*>(nullptr),
      static_cast<int>(n), static_cast<int>(rows), no_offsets, no_offsets + 1);
  scratch.cub_bytes = align256(scratch.cub_bytes);
  return status;
}

}  // namespace

cudaError_t sort_top_k_temp_bytes(const HeadMeanView& view, std::size_t& bytes) {
  if (view.n_rows == 0 || view.n_cols == 0) {
    bytes = 0;
    return cudaSuccess;
  }
  SortScratch scratch{};
  const cudaError_t status = sort_scratch(view, scratch);
  bytes = scratch.total();
  return status;
}

cudaError_t sort_top_k(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights, void* temp,
                       std::size_t temp_bytes, cudaStream_t stream) {
  if (view.n_rows == 0 || view.n_cols == 0) return cudaSuccess;
  SortScratch scratch{};
  cudaError_t status = sort_scratch(view, scratch);
  if (status != cudaSuccess) return status;
  if (temp_bytes < scratch.total()) return cudaErrorInvalidValue;
  auto* bytes = static_cast<unsigned char*>(temp);
  auto* keys = reinterpret_cast<std::uint64_t*>(bytes);
  auto* sorted = reinterpret_cast<std::uint64_t*>(bytes + scratch.keys_bytes);
  auto* offsets = reinterpret_cast<int*>(bytes + 2 * scratch.keys_bytes);
  void* cub_temp = bytes + 2 * scratch.keys_bytes + scratch.offsets_bytes;
  const std::size_t batch = sort_batch_rows(view);
  for (std::size_t first = 0; first < view.n_rows; first += batch) {
    const std::size_t rows = std::min(batch, view.n_rows - first);
    const std::size_t n = rows * view.n_cols;
    status = dispatch_dtype<LaunchKeys>(view.dtype, view, first, rows, keys, offsets, stream);
    if (status != cudaSuccess) return status;
    std::size_t cub_bytes = scratch.cub_bytes;
    status =
        cub::DeviceSegmentedRadixSort::SortKeysDescending(cub_temp, cub_bytes, keys, sorted, static_cast<int>(n),
                                                          static_cast<int>(rows), offsets, offsets + 1, 0, 64, stream);
    if (status != cudaSuccess) return status;
    take_k_kernel<<<grid_blocks(rows * k, 256), 256, 0, stream>>>(sorted, rows, view.n_cols, k, indices + first * k,
                                                                  weights + first * k);
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

}  // namespace micache::cuda
