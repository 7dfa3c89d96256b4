// attend_records on the device: the scores (record_scores.cu), then
// flash-decoding partials per chunk of detail::kAttendChunkTokens tokens, then
// a combine per query head in chunk order (attend_split.hpp, the CPU's split).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/record_plan.hpp"
#include "cuda/records.cuh"
#include "micache/backend/detail/attend_split.hpp"
#include "micache/backend/detail/parallel_record.hpp"

namespace micache::cuda {
namespace {

using detail::RecordLayout;

// Block-wide reduction of one float per thread (blockDim.x a power of two,
// `scratch` blockDim.x floats); every thread gets the result.
template <class Op>
__device__ float block_reduce(float value, float* scratch, Op op) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (unsigned width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) scratch[threadIdx.x] = op(scratch[threadIdx.x], scratch[threadIdx.x + width]);
    __syncthreads();
  }
  const float result = scratch[0];
  __syncthreads();
  return result;
}

// Memory access: block per (chunk of kAttendChunkTokens tokens, query head),
// grid-stride over both. Thread t reads score t of the chunk once, the
// block reduces the chunk's max and sum of exp(score - max); the chunk's
// value records are staged in shared memory (coalesced word loads) when they
// fit; then thread i accumulates rotated coordinate i over the chunk's tokens
// in token order (the CPU's order) and writes it to the chunk's partial.
// Bytes: 4 * tokens scores and tokens * record_bytes value records read per
// query head, (p + 2) floats per chunk written. 48 registers, no spills, up to
// 29 KiB shared; about 9 instructions per value byte: 40-60 % of the copy
// roof, compute-bound on code extraction.
__global__ void __launch_bounds__(detail::kAttendChunkTokens)
    attend_partial_kernel(const __grid_constant__ RecordRing values, std::size_t query_heads, std::size_t group_size,
                          std::size_t tokens, FastDivmod words, const float* scores, float* partials) {
  extern __shared__ __align__(16) std::uint32_t shared_words[];
  constexpr std::uint32_t kChunk = detail::kAttendChunkTokens;
  const RecordLayout& layout = values.layout;
  const std::uint32_t p = layout.padded_dim;
  const bool staged_records = attend_stages_records(layout);
  const std::uint32_t stride_words = staged_stride_words(layout.record_bytes);
  std::uint32_t* staged = shared_words;
  float* weights = reinterpret_cast<float*>(shared_words + (staged_records ? kChunk * stride_words : 0));
  float* reduce = weights + kChunk;
  float* centroids = reduce + kChunk;
  for (std::uint32_t i = threadIdx.x; i < (1u << layout.bits); i += kChunk) centroids[i] = values.centroids[i];
  const std::size_t chunks = detail::attend_chunks(tokens);
  const std::size_t partial_stride = detail::attend_partial_floats(p);
  for (std::size_t q = blockIdx.y; q < query_heads; q += gridDim.y) {
    const std::size_t head = q / group_size;
    for (std::size_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
      const std::size_t first = chunk * kChunk;
      const auto count = static_cast<std::uint32_t>(min(static_cast<std::size_t>(kChunk), tokens - first));
      const bool valid = threadIdx.x < count;
      const float score = valid ? scores[q * tokens + first + threadIdx.x] : -INFINITY;
      const float max_score = block_reduce(score, reduce, [](float a, float b) { return fmaxf(a, b); });
      const float weight = valid ? detail::exp_f32(score - max_score) : 0.0f;
      const float total = block_reduce(weight, reduce, [](float a, float b) { return a + b; });
      if (staged_records) stage_records(values, head, first, count, words, staged);
      __syncthreads();
      if (valid) {
        const std::uint8_t* record = staged_records
                                         ? reinterpret_cast<const std::uint8_t*>(staged + threadIdx.x * stride_words)
                                         : record_at(values, head, first + threadIdx.x);
        weights[threadIdx.x] = weight * detail::load_f32(record + layout.norm_offset);
      }
      __syncthreads();
      float* partial = partials + (q * chunks + chunk) * partial_stride;
      for (std::uint32_t i = threadIdx.x; i < p; i += kChunk) {
        float sum = 0.0f;
        for (std::uint32_t t = 0; t < count; ++t) {
          const std::uint8_t* record = staged_records ? reinterpret_cast<const std::uint8_t*>(staged + t * stride_words)
                                                      : record_at(values, head, first + t);
          sum += weights[t] * centroids[detail::unpack_code(record, i, layout.bits)];
        }
        partial[2 + i] = sum;
      }
      if (threadIdx.x == 0) {
        partial[0] = max_score;
        partial[1] = total;
      }
      __syncthreads();
    }
  }
}

// Memory access: block per query head (grid-stride) reads its chunks'
// partials once (thread i the coordinate i of every chunk, coalesced across
// threads), combines them in chunk order (detail::attend_*), runs
// group_unrotate in shared memory (p <= kCombineSharedMaxP) or in its global
// slice, and writes `dim` floats. Bytes: chunks * (p + 2) floats read, 4 * dim
// written, per query head. 40 registers, no spills; small next to the
// partials.
__global__ void __launch_bounds__(kPrepareThreads)
    attend_combine_kernel(const __grid_constant__ RecordRing values, std::size_t query_heads, std::size_t group_size,
                          std::size_t tokens, const float* partials, float* global_work, float* out) {
  extern __shared__ __align__(16) float shared_floats[];
  const RecordLayout& layout = values.layout;
  const std::uint32_t p = layout.padded_dim;
  const std::size_t chunks = detail::attend_chunks(tokens);
  const std::size_t stride = detail::attend_partial_floats(p);
  for (std::size_t q = blockIdx.x; q < query_heads; q += gridDim.x) {
    const float* mine = partials + q * chunks * stride;
    float* y = p <= kCombineSharedMaxP ? shared_floats : global_work + q * p;
    const float max_score = detail::attend_max(mine, chunks, stride);
    const float finish = detail::inv_sqrt_power_of_two(p) / detail::attend_total(mine, chunks, stride, max_score);
    for (std::uint32_t i = threadIdx.x; i < p; i += kPrepareThreads) {
      y[i] = detail::attend_coordinate(mine, chunks, stride, max_score, i) * finish;
    }
    __syncthreads();
    const std::size_t head = q / group_size;
    detail::group_unrotate(y, out + q * layout.dim, values.signs + head * values.sign_words, p, layout.dim, threadIdx.x,
                           kPrepareThreads, BlockSync{});
    __syncthreads();
  }
}

}  // namespace

std::size_t attend_scratch_bytes(const RecordQuery& query, const RecordRing& values) {
  const std::size_t p = values.layout.padded_dim;
  const std::size_t chunks = detail::attend_chunks(std::max<std::size_t>(query.tokens, 1));
  const std::size_t scores = query.query_heads * query.tokens;
  const std::size_t partials = query.query_heads * chunks * detail::attend_partial_floats(p);
  const std::size_t work = p > kCombineSharedMaxP ? query.query_heads * p : 0;
  return score_scratch_bytes(query) + (scores + partials + work) * sizeof(float);
}

cudaError_t launch_attend_records(const RecordQuery& query, const RecordRing& values, void* scratch, float* out,
                                  cudaStream_t stream) {
  if (query.query_heads == 0 || query.tokens == 0) return cudaSuccess;
  const std::size_t chunks = detail::attend_chunks(query.tokens);
  auto* scores = reinterpret_cast<float*>(static_cast<std::uint8_t*>(scratch) + score_scratch_bytes(query));
  float* partials = scores + query.query_heads * query.tokens;
  float* work = partials + query.query_heads * chunks * detail::attend_partial_floats(values.layout.padded_dim);
  cudaError_t status = launch_score_records(query, scratch, scores, stream);
  if (status != cudaSuccess) return status;
  const dim3 grid(grid_blocks(chunks, 1), grid_blocks(query.query_heads, 1, kMaxGridY));
  attend_partial_kernel<<<grid, detail::kAttendChunkTokens, attend_partial_shared_bytes(values.layout), stream>>>(
      reduced(values), query.query_heads, query.group_size, query.tokens, FastDivmod(values.layout.record_bytes / 4u),
      scores, partials);
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  attend_combine_kernel<<<grid_blocks(query.query_heads, 1), kPrepareThreads, combine_shared_bytes(values.layout),
                          stream>>>(values, query.query_heads, query.group_size, query.tokens, partials, work, out);
  return cudaGetLastError();
}

}  // namespace micache::cuda
