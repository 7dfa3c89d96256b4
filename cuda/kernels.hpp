// Private: launchers of the CUDA kernels (defined in the .cu files), called by CudaBackend.
// C++17. Each returns the launch's cudaError_t; none synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "micache/compressed_records.hpp"
#include "micache/dtype.hpp"
#include "micache/head_mean_view.hpp"
#include "micache/token_copy.hpp"

namespace micache::cuda {

/// Backend::convert on the device.
cudaError_t launch_convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                           cudaStream_t stream);

/// Backend::head_mean on the device.
cudaError_t launch_head_mean(const HeadMeanView& view, float* out, cudaStream_t stream);

/// Backend::top_k_head_mean for 1 <= k <= kWarpTopKMax: one block per row, warp-level selection.
cudaError_t launch_top_k_warp(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                              cudaStream_t stream);

/// Scratch bytes `sort_top_k` needs for `view`'s rows.
cudaError_t sort_top_k_temp_bytes(const HeadMeanView& view, std::size_t& bytes);

/// Backend::top_k_head_mean for any k by a full segmented sort of each row
/// (cub::DeviceSegmentedSort on detail::top_k_key keys); `temp` holds
/// `sort_top_k_temp_bytes` bytes. Also the baseline the warp path must beat.
cudaError_t sort_top_k(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                       void* temp, std::size_t temp_bytes, cudaStream_t stream);

/// Chunks `launch_column_sums` needs partial-sum scratch for: ceil(n_rows / kColumnSumChunkRows).
std::size_t column_sum_chunks(const HeadMeanView& view);

/// Backend::head_mean_column_sums on the device; `partial` holds
/// column_sum_chunks(view) * n_cols floats (unused when there is one chunk).
cudaError_t launch_column_sums(const HeadMeanView& view, float* partial, float* out, cudaStream_t stream);

/// Vectors one encode or decode launch handles (bounds the per-thread scratch).
inline constexpr std::size_t kRecordChunk = 8192;

/// Backend::find_non_finite on the device: atomicMin of the first bad index
/// into `*first`, which the caller initialises to `count`.
cudaError_t launch_find_non_finite(const void* data, DType dtype, std::size_t count, unsigned long long* first,
                                   cudaStream_t stream);

/// Floats of scratch `launch_encode_records` needs.
std::size_t encode_scratch_floats(const RecordEncode& encode);

/// Backend::encode_records on the device, kRecordChunk vectors per launch.
cudaError_t launch_encode_records(const RecordEncode& encode, float* scratch, cudaStream_t stream);

/// Backend::score_records on the device: one launch.
cudaError_t launch_score_records(const RecordQuery& query, float* scores, cudaStream_t stream);

/// Backend::attend_records on the device: one launch; `weights` holds
/// query_heads * tokens floats of scratch.
cudaError_t launch_attend_records(const RecordQuery& query, const RecordRing& values, float* weights, float* out,
                                  cudaStream_t stream);

/// Floats of scratch `launch_decode_records` needs.
std::size_t decode_scratch_floats(const RecordRing& ring, std::size_t tokens);

/// Backend::decode_records on the device, kRecordChunk vectors per launch.
cudaError_t launch_decode_records(const RecordRing& ring, std::size_t tokens, float* scratch, float* out,
                                  cudaStream_t stream);

/// Backend::copy_tokens on the device.
cudaError_t launch_copy_tokens(const TokenCopy& copy, cudaStream_t stream);

}  // namespace micache::cuda
