// score_records on the device: each query head rotated and projected once
// (the projection in qjl_projection.hpp's order, so the CPU's bits), then
// tiles of records scored against every query head of their group.
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/record_plan.hpp"
#include "cuda/records.cuh"
#include "micache/backend/detail/estimators.hpp"
#include "micache/backend/detail/parallel_record.hpp"
#include "micache/backend/detail/qjl_projection.hpp"

namespace micache::cuda {
namespace {

using detail::RecordLayout;

// Memory access: block per query head (grid-stride): loads the query (dim
// elements, coalesced), rotates it with group_rotate in shared memory (p <=
// kPrepareSharedMaxP) or in its global slice, writes [rotated: p] and, for
// QJL, [projected: m] with a warp per projection row (lanes read the row
// coalesced; lane_partial_dot then warp_sum, detail::project_query's bits).
// Bytes: dim query elements and m * p matrix floats read, p + m floats
// written per query head; once per call instead of once per tile.
// 32 registers, no spills; a few microseconds per call, off the token loop.
__global__ void __launch_bounds__(kPrepareThreads)
    prepare_kernel(const __grid_constant__ RecordQuery query, float* prepared, float* global_work) {
  extern __shared__ __align__(16) float shared_floats[];
  const RecordLayout& layout = query.keys.layout;
  const std::uint32_t p = layout.padded_dim;
  const std::size_t stride = prepared_floats(layout);
  const bool in_shared = p <= kPrepareSharedMaxP;
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  for (std::size_t q = blockIdx.x; q < query.query_heads; q += gridDim.x) {
    const std::size_t head = q / query.group_size;
    float* out = prepared + q * stride;
    float* x = in_shared ? shared_floats : global_work + q * p;
    float* rotated = in_shared ? shared_floats + p : out;
    for (std::uint32_t i = threadIdx.x; i < layout.dim; i += kPrepareThreads) {
      x[i] = load_as_f32(query.queries, query.dtype, q * layout.dim + i);
    }
    __syncthreads();
    detail::group_rotate(x, layout.dim, rotated, query.keys.signs + head * query.keys.sign_words, p, threadIdx.x,
                         kPrepareThreads, BlockSync{});
    if (in_shared) {
      for (std::uint32_t i = threadIdx.x; i < p; i += kPrepareThreads) out[i] = rotated[i];
    }
    if (query.qjl) {
      const float* matrix = query.keys.projections + head * layout.projections * static_cast<std::size_t>(p);
      for (std::uint32_t j = warp; j < layout.projections; j += kPrepareThreads / 32) {
        const float sum =
            warp_sum(detail::lane_partial_dot(matrix + static_cast<std::size_t>(j) * p, rotated, p, lane));
        if (lane == 0) out[p + j] = sum;
      }
    }
    __syncthreads();
  }
}

__device__ float estimate(const RecordQuery& query, const std::uint8_t* record, const float* centroids,
                          const float* prepared) {
  const RecordLayout& layout = query.keys.layout;
  const float value = query.qjl
                          ? detail::estimate_qjl(record, layout, centroids, prepared, prepared + layout.padded_dim)
                          : detail::estimate_mse(record, layout, centroids, prepared, query.inv_alpha);
  return value * query.scale;
}

// Memory access: block per (tile of kScoreTileTokens tokens, key head),
// grid-stride over both. The block stages the tile's records into shared
// memory with consecutive threads loading consecutive 32-bit words
// (for_each_staged_word: coalesced), then thread t scores token t against
// every query head of the key head's group (the prepared queries are read by
// all threads at once: broadcasts from L1). Records are read once per key
// head, not once per query head. Bytes: tokens * record_bytes read per key
// head, 4 * tokens written per query head. 32 registers, no spills, up to
// 34 KiB shared; about 6 instructions per record byte per query head: 60-85 %
// of the copy roof for MHA, compute-bound (group_size x fewer bytes) for GQA.
__global__ void __launch_bounds__(kScoreTileTokens)
    score_tile_kernel(const __grid_constant__ RecordQuery query, FastDivmod words, const float* prepared,
                      float* scores) {
  extern __shared__ __align__(16) std::uint32_t shared_words[];
  const RecordRing& keys = query.keys;
  const RecordLayout& layout = keys.layout;
  const std::uint32_t stride_words = staged_stride_words(layout.record_bytes);
  std::uint32_t* staged = shared_words;
  auto* centroids = reinterpret_cast<float*>(shared_words + kScoreTileTokens * stride_words);
  for (std::uint32_t i = threadIdx.x; i < (1u << layout.bits); i += kScoreTileTokens) centroids[i] = keys.centroids[i];
  const std::size_t stride = prepared_floats(layout);
  const std::size_t key_heads = query.query_heads / query.group_size;
  for (std::size_t head = blockIdx.y; head < key_heads; head += gridDim.y) {
    for (std::size_t first = static_cast<std::size_t>(blockIdx.x) * kScoreTileTokens; first < query.tokens;
         first += static_cast<std::size_t>(gridDim.x) * kScoreTileTokens) {
      const auto count =
          static_cast<std::uint32_t>(min(static_cast<std::size_t>(kScoreTileTokens), query.tokens - first));
      __syncthreads();
      stage_records(keys, head, first, count, words, staged);
      __syncthreads();
      if (threadIdx.x < count) {
        const auto* record = reinterpret_cast<const std::uint8_t*>(staged + threadIdx.x * stride_words);
        const std::size_t t = first + threadIdx.x;
        for (std::size_t q = head * query.group_size; q < (head + 1) * query.group_size; ++q) {
          scores[q * query.tokens + t] = estimate(query, record, centroids, prepared + q * stride);
        }
      }
    }
  }
}

// Memory access (records over kStagedRecordBytes): warp per (token, key
// head), grid-stride; lanes read consecutive codes of the record (coalesced)
// and the matching rotated query coordinates, then reduce across the warp;
// the QJL sketch likewise over sign bits. Every query head of the group
// reuses the record from L1. Bytes as score_tile_kernel. 32 registers, 16
// bytes spilled; long records keep the warp's loads wide: 50-80 %.
__global__ void __launch_bounds__(kScoreTileTokens)
    score_warp_kernel(const __grid_constant__ RecordQuery query, const float* prepared, float* scores) {
  const RecordRing& keys = query.keys;
  const RecordLayout& layout = keys.layout;
  const unsigned lane = threadIdx.x % 32;
  const std::size_t warps_per_block = kScoreTileTokens / 32;
  const std::size_t stride = prepared_floats(layout);
  const std::size_t key_heads = query.query_heads / query.group_size;
  for (std::size_t head = blockIdx.y; head < key_heads; head += gridDim.y) {
    for (std::size_t t = static_cast<std::size_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32; t < query.tokens;
         t += static_cast<std::size_t>(gridDim.x) * warps_per_block) {
      const std::uint8_t* record = record_at(keys, head, t);
      const float norm = detail::load_f32(record + layout.norm_offset);
      for (std::size_t q = head * query.group_size; q < (head + 1) * query.group_size; ++q) {
        const float* rotated = prepared + q * stride;
        float dot = 0.0f;
        for (std::uint32_t i = lane; i < layout.padded_dim; i += 32) {
          dot += rotated[i] * keys.centroids[detail::unpack_code(record, i, layout.bits)];
        }
        dot = warp_sum(dot);
        float value = 0.0f;
        if (query.qjl) {
          const float* projected = rotated + layout.padded_dim;
          float sketch = 0.0f;
          for (std::uint32_t j = lane; j < layout.projections; j += 32) {
            sketch += detail::qjl_sign_positive(record, layout, j) ? projected[j] : -projected[j];
          }
          value = detail::qjl_from_parts(norm, dot, detail::load_f32(record + layout.residual_norm_offset),
                                         warp_sum(sketch), layout);
        } else {
          value = detail::mse_from_dot(norm, dot, layout, query.inv_alpha);
        }
        if (lane == 0) scores[q * query.tokens + t] = value * query.scale;
      }
    }
  }
}

cudaError_t launch_score(const RecordQuery& query, const float* prepared, float* scores, cudaStream_t stream) {
  const RecordLayout& layout = query.keys.layout;
  const std::size_t key_heads = query.query_heads / query.group_size;
  const unsigned heads = grid_blocks(key_heads, 1, kMaxGridY);
  if (score_stages_records(layout)) {
    const dim3 grid(grid_blocks(query.tokens, kScoreTileTokens), heads);
    score_tile_kernel<<<grid, kScoreTileTokens, score_shared_bytes(layout), stream>>>(
        query, FastDivmod(layout.record_bytes / 4u), prepared, scores);
  } else {
    const dim3 grid(grid_blocks(query.tokens, kScoreTileTokens / 32), heads);
    score_warp_kernel<<<grid, kScoreTileTokens, 0, stream>>>(query, prepared, scores);
  }
  return cudaGetLastError();
}

cudaError_t launch_prepare(const RecordQuery& query, float* prepared, float* work, cudaStream_t stream) {
  prepare_kernel<<<grid_blocks(query.query_heads, 1), kPrepareThreads, prepare_shared_bytes(query.keys.layout),
                   stream>>>(query, prepared, work);
  return cudaGetLastError();
}

}  // namespace

std::size_t score_scratch_bytes(const RecordQuery& query) {
  const RecordLayout& layout = query.keys.layout;
  const std::size_t work = layout.padded_dim > kPrepareSharedMaxP ? query.query_heads * layout.padded_dim : 0;
  return (query.query_heads * prepared_floats(layout) + work) * sizeof(float);
}

cudaError_t launch_score_records(const RecordQuery& request, void* scratch, float* scores, cudaStream_t stream) {
  if (request.tokens == 0 || request.query_heads == 0) return cudaSuccess;
  RecordQuery query = request;
  query.keys = reduced(query.keys);
  auto* prepared = static_cast<float*>(scratch);
  cudaError_t status =
      launch_prepare(query, prepared, prepared + query.query_heads * prepared_floats(query.keys.layout), stream);
  if (status != cudaSuccess) return status;
  return launch_score(query, prepared, scores, stream);
}

}  // namespace micache::cuda
