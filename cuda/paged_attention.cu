// Backend::paged_decode_attention on the device: the reference kernel, in
// PagedDecodeAttention's order (the CPU's), simple rather than fast.
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "micache/backend/paged_attention.hpp"

namespace micache::cuda {
namespace {

constexpr unsigned kAttentionThreads = 256;
constexpr unsigned kAttentionWarps = kAttentionThreads / 32;
constexpr unsigned kChunk = static_cast<unsigned>(kPagedAttentionChunkTokens);

// The scores of attended tokens [first, first + count) of request i against `query`
// into scores[0, count): warp w takes tokens w, w + 8, ...; lane l sums the
// products of elements l, l + 32, ... in order and warp_sum adds the lanes
// (detail::warp_order_dot's tree); the score is then scaled once.
__device__ void chunk_scores(const PagedDecodeAttention& a, const AttendedTokens& attended, std::size_t i,
                             std::size_t head, std::size_t first, unsigned count, const float* query, float* scores) {
  const std::size_t dim = a.pages.head_dim;
  const unsigned lane = threadIdx.x % 32;
  for (unsigned j = threadIdx.x / 32; j < count; j += kAttentionWarps) {
    const std::size_t row = a.row(i, attended.token(first + j), 0, head);
    float partial = 0.0f;
    for (std::size_t e = lane; e < dim; e += 32) {
      partial = detail::add_rn(partial, detail::mul_rn(query[e], load_as_f32(a.pages.data, a.pages.dtype, row + e)));
    }
    const float dot = warp_sum(partial);
    if (lane == 0) scores[j] = detail::mul_rn(dot, a.scale);
  }
}

// Memory access: block per (request, query head), grid-stride over the
// pairs. The query head is staged in shared memory as f32; the tokens go in
// chunks of kChunk whose scores sit in shared memory: a first pass over the
// key rows finds the max (every thread scans the chunk's scores in token
// order), a second recomputes the scores (the same bits), turns them into
// weights, and thread d accumulates element d of the output over the chunk's
// tokens in token order, keeping its running sum in `out` between chunks;
// every thread adds the weights in token order for the denominator. Key rows
// are read by a warp per token (a coalesced row), value rows by the block
// (consecutive d). Bytes per query head: 2 * head_dim * dtype size per token
// of keys, head_dim * dtype size per token of values, 4 * head_dim written;
// shared memory 4 * (head_dim + kChunk) bytes (17 KiB at the largest head_dim).
// Not yet timed on a GPU.
__global__ void __launch_bounds__(kAttentionThreads)
    paged_decode_attention_kernel(const __grid_constant__ PagedDecodeAttention a) {
  extern __shared__ float shared_floats[];
  const std::size_t dim = a.pages.head_dim;
  float* query = shared_floats;
  float* scores = shared_floats + dim;
  const std::size_t pairs = a.batch * a.qo_heads;
  for (std::size_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const std::size_t i = pair / a.qo_heads;
    const std::size_t q = pair % a.qo_heads;
    const std::size_t head = q / a.group_size();
    const AttendedTokens attended = a.attended(i);
    const std::size_t tokens = attended.count;
    float* out = a.out + pair * dim;
    for (std::size_t d = threadIdx.x; d < dim; d += kAttentionThreads) {
      query[d] = load_as_f32(a.queries, a.pages.dtype, i * a.query_stride + q * dim + d);
    }
    __syncthreads();
    float max = -INFINITY;
    for (std::size_t first = 0; first < tokens; first += kChunk) {
      const auto count = static_cast<unsigned>(min(static_cast<std::size_t>(kChunk), tokens - first));
      chunk_scores(a, attended, i, head, first, count, query, scores);
      __syncthreads();
      for (unsigned j = 0; j < count; ++j) max = scores[j] > max ? scores[j] : max;
      __syncthreads();
    }
    float sum = 0.0f;
    for (std::size_t first = 0; first < tokens; first += kChunk) {
      const auto count = static_cast<unsigned>(min(static_cast<std::size_t>(kChunk), tokens - first));
      chunk_scores(a, attended, i, head, first, count, query, scores);
      __syncthreads();
      if (threadIdx.x < count) scores[threadIdx.x] = detail::exp_f32(scores[threadIdx.x] - max);
      __syncthreads();
      for (unsigned j = 0; j < count; ++j) sum = detail::add_rn(sum, scores[j]);
      for (std::size_t d = threadIdx.x; d < dim; d += kAttentionThreads) {
        float acc = first == 0 ? 0.0f : out[d];
        for (unsigned j = 0; j < count; ++j) {
          const std::size_t row = a.row(i, attended.token(first + j), 1, head);
          acc = detail::add_rn(acc, detail::mul_rn(scores[j], load_as_f32(a.pages.data, a.pages.dtype, row + d)));
        }
        out[d] = acc;
      }
      __syncthreads();
    }
    for (std::size_t d = threadIdx.x; d < dim; d += kAttentionThreads) {
      out[d] = tokens == 0 ? 0.0f : detail::div_rn(out[d], sum);
    }
    if (a.lse != nullptr && threadIdx.x == 0) a.lse[pair] = tokens == 0 ? -INFINITY : detail::add_rn(max, logf(sum));
    __syncthreads();
  }
}

}  // namespace

cudaError_t launch_paged_decode_attention(const PagedDecodeAttention& attention, cudaStream_t stream) {
  const std::size_t pairs = attention.batch * attention.qo_heads;
  if (pairs == 0) return cudaSuccess;
  const std::size_t shared = (attention.pages.head_dim + kPagedAttentionChunkTokens) * sizeof(float);
  paged_decode_attention_kernel<<<grid_blocks(pairs, 1), kAttentionThreads, shared, stream>>>(attention);
  return cudaGetLastError();
}

}  // namespace micache::cuda
