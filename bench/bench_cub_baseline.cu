// CUB's way to the top-k of every row: one segmented sort of (weight, column) pairs, then take k.
// Declarations and contract: bench/cub_baseline.hpp.
#include <cub/device/device_segmented_sort.cuh>

#include "bench/cub_baseline.hpp"

namespace micache::bench {
namespace {

// Scratch layout: [offsets rows + 1][columns n][sorted weights n][sorted columns n][CUB temp],
// each part 256-byte aligned.
struct Scratch {
  std::size_t offsets_bytes, columns_bytes, weights_bytes, cub_bytes;

  std::int64_t* offsets(void* base) const { return static_cast<std::int64_t*>(base); }
  std::int32_t* columns(void* base) const { return reinterpret_cast<std::int32_t*>(at(base, offsets_bytes)); }
  float* sorted_weights(void* base) const { return reinterpret_cast<float*>(at(base, offsets_bytes + columns_bytes)); }
  std::int32_t* sorted_columns(void* base) const {
    return reinterpret_cast<std::int32_t*>(at(base, offsets_bytes + columns_bytes + weights_bytes));
  }
  void* cub_temp(void* base) const { return at(base, offsets_bytes + 2 * columns_bytes + weights_bytes); }
  std::size_t total() const { return offsets_bytes + 2 * columns_bytes + weights_bytes + cub_bytes; }

  static unsigned char* at(void* base, std::size_t bytes) { return static_cast<unsigned char*>(base) + bytes; }
};

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

cudaError_t layout(std::size_t rows, std::size_t cols, Scratch& scratch) {
  const std::size_t n = rows * cols;
  scratch.offsets_bytes = align256((rows + 1) * sizeof(std::int64_t));
  scratch.columns_bytes = align256(n * sizeof(std::int32_t));
  scratch.weights_bytes = align256(n * sizeof(float));
  scratch.cub_bytes = 0;
  const std::int64_t* no_offsets = nullptr;
  const cudaError_t status = cub::DeviceSegmentedSort::SortPairsDescending(
      nullptr, scratch.cub_bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), static_cast<std::int64_t>(n),
      static_cast<std::int64_t>(rows), no_offsets, no_offsets + 1);
  scratch.cub_bytes = align256(scratch.cub_bytes);
  return status;
}

unsigned blocks_for(std::size_t threads) {
  const std::size_t blocks = (threads + 255) / 256;
  return static_cast<unsigned>(blocks < (1u << 16) ? blocks : (1u << 16));
}

// Memory access: thread per element, one 4-byte column index written (coalesced).
__global__ void prepare_kernel(std::size_t rows, std::size_t cols, std::int64_t* offsets, std::int32_t* columns) {
  const std::size_t n = rows * cols;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    columns[e] = static_cast<std::int32_t>(e % cols);
    if (e % cols == 0) offsets[e / cols] = static_cast<std::int64_t>(e);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) offsets[rows] = static_cast<std::int64_t>(n);
}

// Memory access: thread per output (row, j), one read of the sorted weight and column each.
__global__ void take_k_kernel(const float* sorted_weights, const std::int32_t* sorted_columns, std::size_t rows,
                              std::size_t cols, std::size_t k, std::int32_t* indices, float* top_weights) {
  const std::size_t total = rows * k;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::size_t from = (e / k) * cols + e % k;
    indices[e] = sorted_columns[from];
    top_weights[e] = sorted_weights[from];
  }
}

}  // namespace

int cub_sort_take_k_scratch_bytes(std::size_t rows, std::size_t cols, std::size_t* bytes) {
  Scratch scratch{};
  const cudaError_t status = layout(rows, cols, scratch);
  *bytes = scratch.total();
  return status;
}

int cub_sort_take_k_prepare(void* scratch, std::size_t rows, std::size_t cols) {
  Scratch parts{};
  const cudaError_t status = layout(rows, cols, parts);
  if (status != cudaSuccess) return status;
  prepare_kernel<<<blocks_for(rows * cols), 256>>>(rows, cols, parts.offsets(scratch), parts.columns(scratch));
  return cudaGetLastError();
}

int cub_sort_take_k(const float* weights, std::size_t rows, std::size_t cols, std::size_t k, void* scratch,
                    std::int32_t* indices, float* top_weights) {
  Scratch parts{};
  cudaError_t status = layout(rows, cols, parts);
  if (status != cudaSuccess) return status;
  const std::int64_t* offsets = parts.offsets(scratch);
  status = cub::DeviceSegmentedSort::SortPairsDescending(
      parts.cub_temp(scratch), parts.cub_bytes, weights, parts.sorted_weights(scratch), parts.columns(scratch),
      parts.sorted_columns(scratch), static_cast<std::int64_t>(rows * cols), static_cast<std::int64_t>(rows), offsets,
      offsets + 1);
  if (status != cudaSuccess) return status;
  take_k_kernel<<<blocks_for(rows * k), 256>>>(parts.sorted_weights(scratch), parts.sorted_columns(scratch), rows, cols,
                                               k, indices, top_weights);
  return cudaGetLastError();
}

const char* cuda_status_string(int status) { return cudaGetErrorString(static_cast<cudaError_t>(status)); }

}  // namespace micache::bench
