// encode_records and decode_records on the device: a warp per vector, the
// steps of detail::encode_record and detail::decode_record spread over its
// lanes (parallel_record.hpp), so that records and decodes are the CPU's bits.
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/record_plan.hpp"
#include "cuda/records.cuh"
#include "micache/backend/detail/parallel_record.hpp"
#include "micache/backend/detail/record_codec.hpp"

namespace micache::cuda {
namespace {

using detail::RecordLayout;

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

}  // namespace

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
