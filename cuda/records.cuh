// Private, nvcc only: what the compressed-record kernels share
// (record_codec.cu, record_scores.cu, record_attend.cu): a record's address
// in its ring, the group synchronisers of parallel_record.hpp's steps,
// staging records in shared memory, and the warp-per-vector walk.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/fast_divmod.hpp"
#include "cuda/record_plan.hpp"
#include "cuda/token_copy_plan.hpp"
#include "micache/backend/compressed_records.hpp"

namespace micache::cuda {

/// parallel_record.hpp's `sync` for a group that is one warp.
struct WarpSync {
  __device__ void operator()() const { __syncwarp(); }
};

/// parallel_record.hpp's `sync` for a group that is the whole block.
struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

/// The record of logical token `token` of `head` (`ring.start` already below its capacity).
__device__ inline std::uint8_t* record_at(const RecordRing& ring, std::size_t head, std::size_t token) {
  return ring.records + (head * ring.capacity + ring_slot(ring.start, token, ring.capacity)) * ring.layout.record_bytes;
}

/// Copies tokens [first, first + count) of `head`'s records into `staged`
/// (words, staged_stride_words apart) with the whole block.
/// `words` divides by the record's word count (built on the host).
__device__ inline void stage_records(const RecordRing& ring, std::size_t head, std::size_t first, std::uint32_t count,
                                     const FastDivmod& words, std::uint32_t* staged) {
  const auto* source = reinterpret_cast<const std::uint32_t*>(ring.records);
  for_each_staged_word(ring, head, first, count, words, staged_stride_words(ring.layout.record_bytes), threadIdx.x,
                       blockDim.x, [&](std::size_t to, std::size_t from) { staged[to] = source[from]; });
}

/// The warp a thread belongs to in a kernel of kVectorWarps-warp blocks that
/// hands each warp one vector at a time: its lane, its place in the block, its
/// index in the grid and the grid's warp count (the grid-stride step).
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

/// `ring` with its start reduced below its capacity, which the kernels'
/// ring_slot assumes (RecordRing allows any start). Host side, O(1).
inline RecordRing reduced(RecordRing ring) {
  if (ring.capacity > 0) ring.start %= ring.capacity;
  return ring;
}

}  // namespace micache::cuda
