#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/kernels.hpp"

namespace micache::cuda {
namespace {

using detail::RecordLayout;

constexpr int kBlock = 128;

__device__ std::uint8_t* record_at(const RecordRing& ring, std::size_t head, std::size_t token) {
  return ring.records + (head * ring.capacity + (ring.start + token) % ring.capacity) * ring.layout.record_bytes;
}

// Memory access: grid-stride over the elements, one read each; the first
// non-finite index wins through atomicMin on a 64-bit slot.
__global__ void __launch_bounds__(kBlock)
    find_non_finite_kernel(const void* data, DType dtype, std::size_t count, unsigned long long* first) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kBlock;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x; i < count; i += stride) {
    if (!isfinite(load_as_f32(data, dtype, i))) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

// Memory access: thread per vector (head, token) of this chunk; it reads its
// vector once, works in its own `scratch` slice (dim + 2p floats, L1/L2
// resident) and writes its record once. The arithmetic is detail::encode_record,
// the CPU's function, so the bytes written are the CPU's.
__global__ void __launch_bounds__(kBlock) encode_kernel(const __grid_constant__ RecordEncode encode,
                                                        std::size_t first_vector, std::size_t vectors, float* scratch) {
  const std::size_t local = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (local >= vectors) return;
  const RecordRing& ring = encode.ring;
  const RecordLayout& layout = ring.layout;
  const std::size_t vector = first_vector + local;
  const std::size_t h = vector / encode.tokens;
  const std::size_t t = vector % encode.tokens;
  float* x = scratch + local * (layout.dim + 2 * layout.padded_dim);
  const std::size_t base = h * encode.head_stride + t * encode.token_stride;
  for (std::uint32_t i = 0; i < layout.dim; ++i) x[i] = load_as_f32(encode.input, encode.dtype, base + i);
  const float* projections =
      layout.projections > 0 ? ring.projections + h * layout.projections * layout.padded_dim : nullptr;
  detail::encode_record(x, layout, ring.signs + h * ring.sign_words, ring.centroids, ring.boundaries, projections,
                        x + layout.dim, record_at(ring, h, encode.first + t));
}

// Shared-memory query of one block: [x: dim][rotated: p][projected: m].
struct SharedQuery {
  float* x;
  float* rotated;
  float* projected;

  __device__ SharedQuery(float* shared, const RecordLayout& layout)
      : x(shared), rotated(shared + layout.dim), projected(shared + layout.dim + layout.padded_dim) {}
};

// Loads query head q, rotates it with its key head's signs (thread 0, the
// CPU's sequential rotation) and projects it (threads over the m rows).
__device__ void prepare_query(const RecordQuery& query, std::size_t q, const SharedQuery& shared) {
  const RecordLayout& layout = query.keys.layout;
  const std::size_t head = q / query.group_size;
  for (std::uint32_t i = threadIdx.x; i < layout.dim; i += blockDim.x) {
    shared.x[i] = load_as_f32(query.queries, query.dtype, q * layout.dim + i);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    detail::rotate(shared.x, layout.dim, shared.rotated, query.keys.signs + head * query.keys.sign_words,
                   layout.padded_dim);
  }
  __syncthreads();
  if (query.qjl) {
    const float* matrix = query.keys.projections + head * layout.projections * layout.padded_dim;
    for (std::uint32_t j = threadIdx.x; j < layout.projections; j += blockDim.x) {
      float sum = 0.0f;
      for (std::uint32_t i = 0; i < layout.padded_dim; ++i)
        sum += matrix[j * layout.padded_dim + i] * shared.rotated[i];
      shared.projected[j] = sum;
    }
  }
  __syncthreads();
}

__device__ float score_of(const RecordQuery& query, std::size_t head, std::size_t t, const SharedQuery& shared) {
  const std::uint8_t* record = record_at(query.keys, head, t);
  const RecordLayout& layout = query.keys.layout;
  const float estimate =
      query.qjl ? detail::estimate_qjl(record, layout, query.keys.centroids, shared.rotated, shared.projected)
                : detail::estimate_mse(record, layout, query.keys.centroids, shared.rotated, query.inv_alpha);
  return estimate * query.scale;
}

// Memory access: block per (query head, tile of kBlock tokens): the prepared
// query lives in shared memory; thread per token reads its key record once
// (consecutive threads, consecutive records) and writes one score.
__global__ void __launch_bounds__(kBlock) score_kernel(const __grid_constant__ RecordQuery query, float* scores) {
  extern __shared__ float shared_memory[];
  const SharedQuery shared(shared_memory, query.keys.layout);
  const std::size_t q = blockIdx.y;
  prepare_query(query, q, shared);
  const std::size_t t = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (t < query.tokens) scores[q * query.tokens + t] = score_of(query, q / query.group_size, t, shared);
}

// Block-wide reduction of one float per thread with `op`; every thread gets the result.
template <class Op>
__device__ float block_reduce(float value, float* scratch, Op op) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (unsigned width = kBlock / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) scratch[threadIdx.x] = op(scratch[threadIdx.x], scratch[threadIdx.x + width]);
    __syncthreads();
  }
  const float result = scratch[0];
  __syncthreads();
  return result;
}

// Memory access: block per query head. Pass 1 reads every key record once
// (thread per token) and writes the scores to `weights`; pass 2 turns them into
// exp(score - max) in place; pass 3 reads every value record once, thread per
// rotated coordinate, accumulating weight * norm * centroid in shared memory;
// thread 0 rotates the result back once.
__global__ void __launch_bounds__(kBlock)
    attend_kernel(const __grid_constant__ RecordQuery query, const __grid_constant__ RecordRing values, float* weights,
                  float* out) {
  extern __shared__ float shared_memory[];
  const RecordLayout& layout = values.layout;
  const SharedQuery shared(shared_memory, query.keys.layout);
  float* accumulator = shared_memory + layout.dim + layout.padded_dim + query.keys.layout.projections;
  float* reduce = accumulator + layout.padded_dim;
  const std::size_t q = blockIdx.x;
  const std::size_t head = q / query.group_size;
  float* w = weights + q * query.tokens;
  prepare_query(query, q, shared);

  float local_max = -INFINITY;
  for (std::size_t t = threadIdx.x; t < query.tokens; t += kBlock) {
    w[t] = score_of(query, head, t, shared);
    local_max = fmaxf(local_max, w[t]);
  }
  const float max_score = block_reduce(local_max, reduce, [](float a, float b) { return fmaxf(a, b); });
  float local_sum = 0.0f;
  for (std::size_t t = threadIdx.x; t < query.tokens; t += kBlock) {
    w[t] = expf(w[t] - max_score);
    local_sum += w[t];
  }
  const float total = block_reduce(local_sum, reduce, [](float a, float b) { return a + b; });

  for (std::uint32_t i = threadIdx.x; i < layout.padded_dim; i += kBlock) {
    float sum = 0.0f;
    for (std::size_t t = 0; t < query.tokens; ++t) {
      const std::uint8_t* record = record_at(values, head, t);
      sum += w[t] * detail::load_f32(record + layout.norm_offset) *
             values.centroids[detail::unpack_code(record, i, layout.bits)];
    }
    accumulator[i] = sum * (detail::inv_sqrt_power_of_two(layout.padded_dim) / total);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    detail::unrotate(accumulator, out + q * layout.dim, values.signs + head * values.sign_words, layout.padded_dim,
                     layout.dim);
  }
}

// Memory access: thread per record of this chunk: one read of the record,
// p floats of its own scratch, `dim` floats written.
__global__ void __launch_bounds__(kBlock)
    decode_kernel(const __grid_constant__ RecordRing ring, std::size_t tokens, std::size_t first_vector,
                  std::size_t vectors, float* scratch, float* out) {
  const std::size_t local = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (local >= vectors) return;
  const std::size_t vector = first_vector + local;
  const std::size_t h = vector / tokens;
  const std::size_t t = vector % tokens;
  detail::decode_record(record_at(ring, h, t), ring.layout, ring.signs + h * ring.sign_words, ring.centroids,
                        scratch + local * ring.layout.padded_dim, out + vector * ring.layout.dim);
}

unsigned blocks_for(std::size_t threads) {
  return static_cast<unsigned>(std::min<std::size_t>((threads + kBlock - 1) / kBlock, 1u << 20));
}

}  // namespace

cudaError_t launch_find_non_finite(const void* data, DType dtype, std::size_t count, unsigned long long* first,
                                   cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  find_non_finite_kernel<<<blocks_for(count), kBlock, 0, stream>>>(data, dtype, count, first);
  return cudaGetLastError();
}

std::size_t encode_scratch_floats(const RecordEncode& encode) {
  const RecordLayout& layout = encode.ring.layout;
  return std::min(kRecordChunk, encode.ring.heads * encode.tokens) *
         (layout.dim + 2 * static_cast<std::size_t>(layout.padded_dim));
}

cudaError_t launch_encode_records(const RecordEncode& encode, float* scratch, cudaStream_t stream) {
  const std::size_t vectors = encode.ring.heads * encode.tokens;
  for (std::size_t first = 0; first < vectors; first += kRecordChunk) {
    const std::size_t count = std::min(kRecordChunk, vectors - first);
    encode_kernel<<<blocks_for(count), kBlock, 0, stream>>>(encode, first, count, scratch);
  }
  return cudaGetLastError();
}

cudaError_t launch_score_records(const RecordQuery& query, float* scores, cudaStream_t stream) {
  if (query.tokens == 0 || query.query_heads == 0) return cudaSuccess;
  const RecordLayout& layout = query.keys.layout;
  const std::size_t shared = (layout.dim + layout.padded_dim + layout.projections) * sizeof(float);
  const dim3 grid(blocks_for(query.tokens), static_cast<unsigned>(query.query_heads));
  score_kernel<<<grid, kBlock, shared, stream>>>(query, scores);
  return cudaGetLastError();
}

cudaError_t launch_attend_records(const RecordQuery& query, const RecordRing& values, float* weights, float* out,
                                  cudaStream_t stream) {
  if (query.query_heads == 0) return cudaSuccess;
  const RecordLayout& layout = query.keys.layout;
  const std::size_t shared = (layout.dim + 2 * layout.padded_dim + layout.projections + kBlock) * sizeof(float);
  attend_kernel<<<static_cast<unsigned>(query.query_heads), kBlock, shared, stream>>>(query, values, weights, out);
  return cudaGetLastError();
}

std::size_t decode_scratch_floats(const RecordRing& ring, std::size_t tokens) {
  return std::min(kRecordChunk, ring.heads * tokens) * ring.layout.padded_dim;
}

cudaError_t launch_decode_records(const RecordRing& ring, std::size_t tokens, float* scratch, float* out,
                                  cudaStream_t stream) {
  const std::size_t vectors = ring.heads * tokens;
  for (std::size_t first = 0; first < vectors; first += kRecordChunk) {
    const std::size_t count = std::min(kRecordChunk, vectors - first);
    decode_kernel<<<blocks_for(count), kBlock, 0, stream>>>(ring, tokens, first, count, scratch, out);
  }
  return cudaGetLastError();
}

}  // namespace micache::cuda
