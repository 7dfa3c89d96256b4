// Private: launchers of the CUDA kernels, called by CudaBackend: the one seam
// between g++ (cuda_backend.cpp) and nvcc (the .cu files, one per operation
// or path).
// C++17. Each returns the cudaError_t of its own launches (checked after each);
// none synchronises the host, none allocates: scratch comes from the caller.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "micache/backend/compressed_records.hpp"
#include "micache/backend/head_mean_view.hpp"
#include "micache/backend/paged_attention.hpp"
#include "micache/backend/paged_kv.hpp"
#include "micache/backend/paged_tables.hpp"
#include "micache/backend/token_copy.hpp"
#include "micache/dtype.hpp"

namespace micache::cuda {

/// Backend::convert on the device.
cudaError_t launch_convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                           cudaStream_t stream);

/// Backend::head_mean on the device.
cudaError_t launch_head_mean(const HeadMeanView& view, float* out, cudaStream_t stream);

/// Scratch bytes `launch_top_k_warp` needs for `view` and `k` on a device of
/// `sms` multiprocessors (0 when each row is one block; see TopKSplit).
std::size_t top_k_warp_scratch_bytes(const HeadMeanView& view, std::size_t k, int sms);

/// Backend::top_k_head_mean for 1 <= k <= kWarpTopKMax: rows split into
/// segments so about 2 * sms blocks run (cuda/row_split.hpp), warp-level
/// selection in each, then a merge kernel when a row has several segments.
/// `scratch` holds top_k_warp_scratch_bytes bytes. No host synchronisation.
cudaError_t launch_top_k_warp(const HeadMeanView& view, std::size_t k, int sms, void* scratch, std::int32_t* indices,
                              float* weights, cudaStream_t stream);

/// Scratch bytes `launch_top_k_select` needs for `view` (0 for rows of at
/// most kSelectSharedKeys columns, whose keys stay in shared memory).
std::size_t top_k_select_scratch_bytes(const HeadMeanView& view);

/// Backend::top_k_head_mean for kWarpTopKMax < k <= kSelectMaxK: block per
/// row, radix select of the k-th key in eight 8-bit passes, then a bitonic
/// sort of the k selected keys (cuda/radix_select.hpp). No host synchronisation.
cudaError_t launch_top_k_select(const HeadMeanView& view, std::size_t k, void* scratch, std::int32_t* indices,
                                float* weights, cudaStream_t stream);

/// Scratch bytes `sort_top_k` needs for `view`'s rows.
cudaError_t sort_top_k_temp_bytes(const HeadMeanView& view, std::size_t& bytes);

/// Backend::top_k_head_mean for any k by a full sort of each row
/// (cub::DeviceSegmentedRadixSort on detail::top_k_key keys, in batches of
/// rows of at most INT_MAX elements); `temp` holds `sort_top_k_temp_bytes`
/// bytes. No host synchronisation (unlike cub::DeviceSegmentedSort, which
/// reads segment group sizes back), so it can be captured in a CUDA graph.
cudaError_t sort_top_k(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights, void* temp,
                       std::size_t temp_bytes, cudaStream_t stream);

/// Chunks `launch_column_sums` needs partial-sum scratch for: ceil(n_rows / kColumnSumChunkRows).
std::size_t column_sum_chunks(const HeadMeanView& view);

/// Backend::head_mean_column_sums on the device; `partial` holds
/// column_sum_chunks(view) * n_cols floats (unused when there is one chunk).
cudaError_t launch_column_sums(const HeadMeanView& view, float* partial, float* out, cudaStream_t stream);

/// Backend::find_non_finite on the device: atomicMin of the first bad index
/// into `*first`, which the caller initialises to `count`.
cudaError_t launch_find_non_finite(const void* data, DType dtype, std::size_t count, unsigned long long* first,
                                   cudaStream_t stream);

/// Bytes of scratch `launch_encode_records` needs (0 up to p = kEncodeSharedMaxP).
std::size_t encode_scratch_bytes(const RecordEncode& encode);

/// Backend::encode_records on the device: one launch, a warp per vector.
cudaError_t launch_encode_records(const RecordEncode& encode, void* scratch, cudaStream_t stream);

/// Bytes of scratch `launch_score_records` needs (the prepared queries).
std::size_t score_scratch_bytes(const RecordQuery& query);

/// Backend::score_records on the device: a prepare kernel (each query head
/// rotated and projected once), then one score launch over tiles of records.
cudaError_t launch_score_records(const RecordQuery& query, void* scratch, float* scores, cudaStream_t stream);

/// Bytes of scratch `launch_attend_records` needs (prepared queries, scores,
/// flash-decoding partials).
std::size_t attend_scratch_bytes(const RecordQuery& query, const RecordRing& values);

/// Backend::attend_records on the device: scores, then partials per chunk of
/// detail::kAttendChunkTokens tokens, then a combine per query head.
cudaError_t launch_attend_records(const RecordQuery& query, const RecordRing& values, void* scratch, float* out,
                                  cudaStream_t stream);

/// Bytes of scratch `launch_decode_records` needs (0 up to p = kDecodeSharedMaxP).
std::size_t decode_scratch_bytes(const RecordRing& ring, std::size_t tokens);

/// Backend::decode_records on the device: one launch, a warp per vector.
cudaError_t launch_decode_records(const RecordRing& ring, std::size_t tokens, void* scratch, float* out,
                                  cudaStream_t stream);

/// Backend::copy_tokens on the device.
cudaError_t launch_copy_tokens(const TokenCopy& copy, cudaStream_t stream);

/// Backend::paged_write on the device: one launch (none for 0 tokens).
cudaError_t launch_paged_write(const PagedWrite& write, cudaStream_t stream);

/// Backend::paged_gather on the device: one launch (none for 0 tokens).
cudaError_t launch_paged_gather(const PagedGather& gather, cudaStream_t stream);

/// Backend::paged_move on the device: one launch (none for 0 tokens).
cudaError_t launch_paged_move(const PagedMove& move, cudaStream_t stream);

/// Backend::paged_build_step on the device: one launch, a block per entry
/// (none for an empty batch).
cudaError_t launch_paged_build_step(const PagedStepBuild& build, cudaStream_t stream);

/// Backend::paged_accounting on the device: one launch of one block; the
/// scratch is the descriptor's.
cudaError_t launch_paged_accounting(const PagedAccounting& accounting, cudaStream_t stream);

/// Backend::paged_decode_attention on the device: one launch (none for an
/// empty batch), no scratch (shared memory only), head_dim <= kPagedAttentionMaxHeadDim.
cudaError_t launch_paged_decode_attention(const PagedDecodeAttention& attention, cudaStream_t stream);

}  // namespace micache::cuda
