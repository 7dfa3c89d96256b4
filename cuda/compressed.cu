#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/grid.hpp"
#include "cuda/kernels.hpp"
#include "cuda/record_plan.hpp"
#include "micache/backend/detail/attend_split.hpp"
#include "micache/backend/detail/parallel_record.hpp"

namespace micache::cuda {
namespace {

using detail::RecordLayout;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kFindBlock = 256;

struct WarpSync {
  __device__ void operator()() const { __syncwarp(); }
};

struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

__device__ std::uint8_t* record_at(const RecordRing& ring, std::size_t head, std::size_t token) {
  return ring.records + (head * ring.capacity + ring_slot(ring.start, token, ring.capacity)) * ring.layout.record_bytes;
}

__device__ float warp_sum(float v) {
#pragma unroll
  for (unsigned width = 16; width > 0; width >>= 1) v += __shfl_xor_sync(kFullMask, v, width);
  return v;
}

__device__ float warp_max(float v) {
#pragma unroll
  for (unsigned width = 16; width > 0; width >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, width));
  return v;
}

// detail::tree_sum of v[0..n) by one warp (n a power of two): each lane sums
// its lane_block with tree_sum in place (its block is its own), then xor
// shuffles 1, 2, 4, ... add the lane sums pairwise: tree_sum's tree, so its
// bits. Every lane returns the sum.
__device__ float warp_tree_sum(float* v, std::uint32_t n, unsigned lane) {
  const detail::LaneBlock block = detail::lane_block(n, lane);
  float sum = block.count > 0 ? detail::tree_sum(v + block.first, block.count) : 0.0f;
  const std::uint32_t lanes = n < 32u ? n : 32u;
  for (std::uint32_t width = 1; width < lanes; width <<= 1) {
    sum = detail::add_rn(sum, __shfl_xor_sync(kFullMask, sum, width));
  }
  return __shfl_sync(kFullMask, sum, 0);
}

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

// Copies tokens [first, first + count) of `head`'s records into `staged`
// (words, staged_stride_words apart) with the whole block.
// `words` divides by the record's word count (built on the host).
__device__ void stage_records(const RecordRing& ring, std::size_t head, std::size_t first, std::uint32_t count,
                              const FastDivmod& words, std::uint32_t* staged) {
  const auto* source = reinterpret_cast<const std::uint32_t*>(ring.records);
  for_each_staged_word(ring, head, first, count, words, staged_stride_words(ring.layout.record_bytes), threadIdx.x,
                       blockDim.x, [&](std::size_t to, std::size_t from) { staged[to] = source[from]; });
}

// The warp a thread belongs to in a kernel of kVectorWarps-warp blocks that
// hands each warp one vector at a time: its lane, its place in the block, its
// index in the grid and the grid's warp count (the grid-stride step).
struct VectorWarp {
  unsigned lane;
  unsigned in_block;
  std::size_t index;
  std::size_t count;

  __device__ VectorWarp()
      : lane(threadIdx.x % 32),
        in_block(threadIdx.x / 32),
        index(static_cast<std::size_t>(blockIdx.x) * kVectorWarps + threadIdx.x / 32),
        count(static_cast<std::size_t>(gridDim.x) * kVectorWarps) {}
};

// ---- find_non_finite ----

// Memory access: grid-stride over the elements, one read each; the first
// non-finite index wins through atomicMin on a 64-bit slot. Bytes: count * size(dtype).
__global__ void __launch_bounds__(kFindBlock)
    find_non_finite_kernel(const void* data, DType dtype, std::size_t count, unsigned long long* first) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kFindBlock;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * kFindBlock + threadIdx.x; i < count; i += stride) {
    if (!isfinite(load_as_f32(data, dtype, i))) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

// ---- encode_records: a warp per vector ----

// Memory access: warp per vector (grid-stride over vectors): lanes read the
// vector's `dim` elements coalesced into the warp's work space (shared
// memory up to p = kEncodeSharedMaxP, else its slice of global scratch),
// rotate it with group_rotate, reduce with warp_tree_sum, compute codes and
// residuals lane-strided, then write the record as whole 32-bit words, lane w
// writing code word w (coalesced) and lane 0 the norms and sign words. The
// arithmetic is detail::encode_record's, step for step, so the bytes are the
// CPU's. Bytes: dim * size(dtype) read, record_bytes written, per vector.
// 48 registers, 8 bytes spilled; compute-bound by the m * p QJL products
// (4096 per key at dim 128): 10-20 % of the copy roof for keys, 30-50 % for
// values.
__global__ void __launch_bounds__(kVectorWarps * 32)
    encode_kernel(const __grid_constant__ RecordEncode encode, std::uint8_t* global_scratch) {
  extern __shared__ __align__(16) std::uint8_t shared_bytes[];
  const RecordRing& ring = encode.ring;
  const RecordLayout& layout = ring.layout;
  const std::uint32_t p = layout.padded_dim;
  const VectorWarp warp;
  const unsigned lane = warp.lane;
  std::uint8_t* space = (p <= kEncodeSharedMaxP ? shared_bytes + warp.in_block * encode_warp_bytes(layout)
                                                : global_scratch + warp.index * encode_warp_bytes(layout));
  float* y = reinterpret_cast<float*>(space);
  float* work = y + p;
  std::uint8_t* codes = reinterpret_cast<std::uint8_t*>(work + p);
  const std::uint32_t levels = 1u << layout.bits;
  const std::size_t vectors = ring.heads * encode.tokens;
  for (std::size_t vector = warp.index; vector < vectors; vector += warp.count) {
    const std::size_t h = vector / encode.tokens;
    const std::size_t t = vector - h * encode.tokens;
    const std::uint32_t* signs = ring.signs + h * ring.sign_words;
    auto* record = reinterpret_cast<std::uint32_t*>(record_at(ring, h, encode.first + t));
    const std::size_t base = h * encode.head_stride + t * encode.token_stride;
    float largest = 0.0f;
    for (std::uint32_t i = lane; i < p; i += 32) {
      const float x = i < layout.dim ? load_as_f32(encode.input, encode.dtype, base + i) : 0.0f;
      work[i] = x;
      largest = fmaxf(largest, fabsf(x));
    }
    largest = warp_max(largest);
    __syncwarp();
    float norm = 0.0f;
    float residual_norm = 0.0f;
    if (largest == 0.0f) {
      const std::uint32_t zero_code = detail::bucket(0.0f, ring.boundaries, levels);
      for (std::uint32_t i = lane; i < p; i += 32) codes[i] = static_cast<std::uint8_t>(zero_code);
    } else {
      const int shift = 1 - detail::binary_exponent(largest);
      const detail::PowerOfTwoScale scale(shift);
      for (std::uint32_t i = lane; i < layout.dim; i += 32) work[i] = scale(work[i]);
      __syncwarp();
      detail::group_rotate(work, layout.dim, y, signs, p, lane, 32, WarpSync{});
      for (std::uint32_t i = lane; i < p; i += 32) work[i] = detail::mul_rn(work[i], work[i]);
      __syncwarp();
      const float scaled_norm = detail::sqrt_rn(warp_tree_sum(work, p, lane));
      norm = detail::PowerOfTwoScale(-shift)(scaled_norm);
      const float t_scale = detail::div_rn(detail::sqrt_power_of_two(p), scaled_norm);
      const float inv_norm = detail::div_rn(1.0f, scaled_norm);
      const float inv_sqrt_p = detail::inv_sqrt_power_of_two(p);
      for (std::uint32_t i = lane; i < p; i += 32) {
        const std::uint32_t code = detail::bucket(detail::mul_rn(y[i], t_scale), ring.boundaries, levels);
        codes[i] = static_cast<std::uint8_t>(code);
        y[i] = detail::add_rn(detail::mul_rn(y[i], inv_norm), -detail::mul_rn(ring.centroids[code], inv_sqrt_p));
      }
      __syncwarp();
      if (layout.projections > 0) {
        for (std::uint32_t i = lane; i < p; i += 32) work[i] = detail::mul_rn(y[i], y[i]);
        __syncwarp();
        residual_norm = detail::sqrt_rn(warp_tree_sum(work, p, lane));
        __syncwarp();
      }
    }
    __syncwarp();
    for (std::uint32_t w = lane; w < layout.code_bytes / 4u; w += 32) record[w] = detail::code_word(codes, layout, w);
    if (lane == 0) record[layout.norm_offset / 4u] = __float_as_uint(norm);
    if (layout.projections > 0) {
      if (lane == 0) record[layout.residual_norm_offset / 4u] = __float_as_uint(residual_norm);
      const float* matrix = ring.projections + h * layout.projections * static_cast<std::size_t>(p);
      const detail::LaneBlock block = detail::lane_block(p, lane);
      const std::uint32_t sign_words = (layout.record_bytes - layout.sign_offset) / 4u;
      for (std::uint32_t word = 0; word < sign_words; ++word) {
        std::uint32_t bits = 0;
        for (std::uint32_t j = word * 32u; j < layout.projections && j < word * 32u + 32u; ++j) {
          if (largest == 0.0f) break;
          const float* row = matrix + static_cast<std::size_t>(j) * p;
          for (std::uint32_t i = block.first; i < block.first + block.count; ++i) {
            work[i] = detail::mul_rn(row[i], y[i]);
          }
          if (warp_tree_sum(work, p, lane) >= 0.0f) bits |= 1u << (j % 32u);
        }
        if (lane == 0) record[layout.sign_offset / 4u + word] = bits;
      }
    }
    __syncwarp();
  }
}

// ---- decode_records: a warp per vector ----

// Memory access: warp per vector (grid-stride): lanes read consecutive codes
// of the record, scale centroids into the warp's work space (shared up to
// p = kDecodeSharedMaxP, else global), run group_unrotate and write `dim`
// floats coalesced: detail::decode_record's steps, so its bits. Bytes:
// record_bytes read, 4 * dim written, per vector. 32 registers, no spills;
// about 5.5 instructions per byte: 60-85 % of the copy roof.
__global__ void __launch_bounds__(kVectorWarps * 32)
    decode_kernel(const __grid_constant__ RecordRing ring, std::size_t tokens, float* global_scratch, float* out) {
  extern __shared__ __align__(16) std::uint8_t shared_bytes[];
  const RecordLayout& layout = ring.layout;
  const std::uint32_t p = layout.padded_dim;
  const VectorWarp warp;
  const unsigned lane = warp.lane;
  float* work = p <= kDecodeSharedMaxP ? reinterpret_cast<float*>(shared_bytes) + warp.in_block * p
                                       : global_scratch + warp.index * p;
  const std::size_t vectors = ring.heads * tokens;
  for (std::size_t vector = warp.index; vector < vectors; vector += warp.count) {
    const std::size_t h = vector / tokens;
    const std::uint8_t* record = record_at(ring, h, vector - h * tokens);
    const float scale = detail::mul_rn(detail::load_f32(record + layout.norm_offset), detail::inv_sqrt_power_of_two(p));
    for (std::uint32_t i = lane; i < p; i += 32) {
      work[i] = detail::mul_rn(ring.centroids[detail::unpack_code(record, i, layout.bits)], scale);
    }
    __syncwarp();
    detail::group_unrotate(work, out + vector * layout.dim, ring.signs + h * ring.sign_words, p, layout.dim, lane, 32,
                           WarpSync{});
    __syncwarp();
  }
}

// ---- score_records: prepare once, then score tiles ----

// Memory access: block per query head (grid-stride): loads the query (dim
// elements, coalesced), rotates it with group_rotate in shared memory (p <=
// kPrepareSharedMaxP) or in its global slice, writes [rotated: p] and, for
// QJL, [projected: m] with a warp per projection row (lanes read the row
// coalesced). Bytes: dim query elements and m * p matrix floats read, p + m
// floats written per query head; once per call instead of once per tile.
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
        const float* row = matrix + static_cast<std::size_t>(j) * p;
        float sum = 0.0f;
        for (std::uint32_t i = lane; i < p; i += 32) sum += row[i] * rotated[i];
        sum = warp_sum(sum);
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

// ---- attend_records: scores, flash-decoding partials, combine ----

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

// `ring` with its start reduced below its capacity, which the kernels'
// ring_slot assumes (RecordRing allows any start).
RecordRing reduced(RecordRing ring) {
  if (ring.capacity > 0) ring.start %= ring.capacity;
  return ring;
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

cudaError_t launch_find_non_finite(const void* data, DType dtype, std::size_t count, unsigned long long* first,
                                   cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  find_non_finite_kernel<<<grid_blocks(count, kFindBlock), kFindBlock, 0, stream>>>(data, dtype, count, first);
  return cudaGetLastError();
}

std::size_t encode_scratch_bytes(const RecordEncode& encode) {
  const RecordLayout& layout = encode.ring.layout;
  if (layout.padded_dim <= kEncodeSharedMaxP) return 0;
  return global_scratch_warps(encode_warp_bytes(layout), encode.ring.heads * encode.tokens) * encode_warp_bytes(layout);
}

cudaError_t launch_encode_records(const RecordEncode& request, void* scratch, cudaStream_t stream) {
  RecordEncode encode = request;
  encode.ring = reduced(encode.ring);
  if (encode.ring.capacity > 0) {  // fold `first` into the start, so the kernel's logical slots are t < capacity
    encode.ring.start = ring_slot(encode.ring.start, encode.first % encode.ring.capacity, encode.ring.capacity);
    encode.first = 0;
  }
  const RecordLayout& layout = encode.ring.layout;
  const std::size_t vectors = encode.ring.heads * encode.tokens;
  if (vectors == 0) return cudaSuccess;
  const std::size_t warps =
      layout.padded_dim <= kEncodeSharedMaxP ? vectors : global_scratch_warps(encode_warp_bytes(layout), vectors);
  encode_kernel<<<grid_blocks(warps, kVectorWarps), kVectorWarps * 32, encode_shared_bytes(layout), stream>>>(
      encode, static_cast<std::uint8_t*>(scratch));
  return cudaGetLastError();
}

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

std::size_t decode_scratch_bytes(const RecordRing& ring, std::size_t tokens) {
  if (ring.layout.padded_dim <= kDecodeSharedMaxP) return 0;
  return global_scratch_warps(decode_warp_bytes(ring.layout), ring.heads * tokens) * decode_warp_bytes(ring.layout);
}

cudaError_t launch_decode_records(const RecordRing& ring, std::size_t tokens, void* scratch, float* out,
                                  cudaStream_t stream) {
  const std::size_t vectors = ring.heads * tokens;
  if (vectors == 0) return cudaSuccess;
  const std::size_t warps = ring.layout.padded_dim <= kDecodeSharedMaxP
                                ? vectors
                                : global_scratch_warps(decode_warp_bytes(ring.layout), vectors);
  decode_kernel<<<grid_blocks(warps, kVectorWarps), kVectorWarps * 32, decode_shared_bytes(ring.layout), stream>>>(
      reduced(ring), tokens, static_cast<float*>(scratch), out);
  return cudaGetLastError();
}

}  // namespace micache::cuda
