// CUB's way to the top-k of every row of a head-mean matrix (bench/bench_cub_baseline.cu), the
// baseline micache's fused top_attended_all is measured against on CUDA. C++17 and no CUDA
// header, so plain C++ benchmark files can call it. Statuses are cudaError_t values (0: success).
#pragma once

#include <cstddef>
#include <cstdint>

namespace micache::bench {

/// Bytes of device scratch `cub_sort_take_k` needs for `rows` rows of `cols` weights: segment
/// offsets, column indices (the sort's input values), sorted weights, sorted indices, CUB's
/// temporary storage.
int cub_sort_take_k_scratch_bytes(std::size_t rows, std::size_t cols, std::size_t* bytes);

/// Writes the segment offsets and column indices into `scratch`, on the default stream. Once per
/// shape: every `cub_sort_take_k` over that shape reuses them.
int cub_sort_take_k_prepare(void* scratch, std::size_t rows, std::size_t cols);

/// On the default stream: cub::DeviceSegmentedSort::SortPairsDescending of `weights` (device,
/// row-major `[rows, cols]` F32; keys: the weights, values: column indices, one segment per row),
/// then a kernel copying the first `k` of each segment to `indices` and `top_weights` (device,
/// `[rows, k]`). Ties come in CUB's order (the sort is not stable).
int cub_sort_take_k(const float* weights, std::size_t rows, std::size_t cols, std::size_t k, void* scratch,
                    std::int32_t* indices, float* top_weights);

/// cudaGetErrorString of a status.
const char* cuda_status_string(int status);

}  // namespace micache::bench
