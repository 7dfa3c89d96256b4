// Private, host-safe (g++ and nvcc, C++17): how the compressed-record
// kernels split their work and how much shared memory each asks for. Every
// request is bounded by kSharedBudget whatever head_dim the config accepts
// (up to 131070): work that does not fit goes through global scratch with the
// same code. Tests walk these plans on the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/fast_divmod.hpp"
#include "cuda/token_copy_plan.hpp"
#include "micache/backend/compressed_records.hpp"
#include "micache/backend/detail/attend_split.hpp"
#include "micache/host_device.hpp"

namespace micache::cuda {

/// Most dynamic plus static shared memory any record kernel uses: the
/// default limit every GPU grants without cudaFuncSetAttribute.
inline constexpr std::size_t kSharedBudget = 48 * 1024;

/// Floats of a centroid table (at most 2^8 levels).
inline constexpr std::size_t kMaxCentroids = 256;

// ---- score_records: prepare each query once, then tiles of staged records ----

/// Threads of the prepare kernel (block per query head).
inline constexpr unsigned kPrepareThreads = 256;
/// Largest p whose query and rotation fit shared memory in the prepare kernel (2p floats).
inline constexpr std::uint32_t kPrepareSharedMaxP = 4096;

/// Tokens per score block, one thread each.
inline constexpr unsigned kScoreTileTokens = 128;
/// Largest record the score kernel stages in shared memory; larger records
/// are scored by a warp per token reading them straight from global memory.
inline constexpr std::uint32_t kStagedRecordBytes = 256;

/// Shared words per staged record: the record's words rounded up to an odd
/// count, so thread t reading word w of record t hits bank (t * stride + w) % 32,
/// distinct across a warp.
MICACHE_HOST_DEVICE constexpr std::uint32_t staged_stride_words(std::uint32_t record_bytes) {
  return (record_bytes / 4u) | 1u;
}

/// True when the score kernel stages `layout`'s records (a tile of them and
/// the centroids fit kSharedBudget).
constexpr bool score_stages_records(const detail::RecordLayout& layout) {
  return layout.record_bytes <= kStagedRecordBytes;
}

/// Shared bytes of the score kernel for `layout`.
constexpr std::size_t score_shared_bytes(const detail::RecordLayout& layout) {
  const std::size_t tile =
      score_stages_records(layout) ? std::size_t{kScoreTileTokens} * staged_stride_words(layout.record_bytes) * 4 : 0;
  return tile + kMaxCentroids * sizeof(float);
}

/// Shared bytes of the prepare kernel for `layout`.
constexpr std::size_t prepare_shared_bytes(const detail::RecordLayout& layout) {
  return layout.padded_dim <= kPrepareSharedMaxP ? 2 * std::size_t{layout.padded_dim} * sizeof(float) : 0;
}

/// Floats of the prepared query of one head: [rotated: p][projected: m].
constexpr std::size_t prepared_floats(const detail::RecordLayout& layout) {
  return std::size_t{layout.padded_dim} + layout.projections;
}

/// Visits the words that rank `rank` of `ranks` loads when staging tokens
/// [first, first + count) of `head` of `ring` (start already < capacity):
/// `visit(shared_word, global_word)`, global words counted from
/// ring.records. Consecutive ranks take consecutive words of consecutive
/// records, so the loads coalesce wherever the ring does not wrap. One
/// FastDivmod per word, no 64-bit division.
template <class Visit>
MICACHE_HOST_DEVICE void for_each_staged_word(const RecordRing& ring, std::size_t head, std::size_t first,
                                              std::uint32_t count, const FastDivmod& words_per_record,
                                              std::uint32_t stride_words, std::uint32_t rank, std::uint32_t ranks,
                                              Visit&& visit) {
  const std::uint32_t words = words_per_record.divisor;
  for (std::uint32_t w = rank; w < count * words; w += ranks) {
    std::uint32_t token = 0;
    std::uint32_t word = 0;
    words_per_record.divmod(w, token, word);
    const std::size_t slot = ring_slot(ring.start, first + token, ring.capacity);
    visit(std::size_t{token} * stride_words + word, (head * ring.capacity + slot) * words + word);
  }
}

// ---- attend_records: flash-decoding partials, then a combine per query head ----

/// Largest value record the partial kernel stages (256 tokens x 25 words fit with its other arrays).
inline constexpr std::uint32_t kAttendStagedRecordBytes = 96;
/// Largest p whose combine runs the inverse rotation in shared memory.
inline constexpr std::uint32_t kCombineSharedMaxP = 8192;

constexpr bool attend_stages_records(const detail::RecordLayout& values) {
  return values.record_bytes <= kAttendStagedRecordBytes;
}

/// Shared bytes of the attend partial kernel: staged records (when they fit),
/// weights, centroids and a reduction buffer, one float per token each.
constexpr std::size_t attend_partial_shared_bytes(const detail::RecordLayout& values) {
  const std::size_t staged =
      attend_stages_records(values) ? detail::kAttendChunkTokens * staged_stride_words(values.record_bytes) * 4 : 0;
  return staged + (2 * detail::kAttendChunkTokens + kMaxCentroids) * sizeof(float);
}

/// Shared bytes of the combine kernel.
constexpr std::size_t combine_shared_bytes(const detail::RecordLayout& values) {
  return values.padded_dim <= kCombineSharedMaxP ? std::size_t{values.padded_dim} * sizeof(float) : 0;
}

// ---- encode_records / decode_records: a warp per vector ----

/// Warps (vectors in flight) per encode or decode block.
inline constexpr unsigned kVectorWarps = 4;
/// Largest p whose encode work space (x, y: p floats each; codes: p bytes) sits in shared memory.
inline constexpr std::uint32_t kEncodeSharedMaxP = 1024;
/// Largest p whose decode work space (p floats) sits in shared memory.
inline constexpr std::uint32_t kDecodeSharedMaxP = 2048;

/// Bytes of one warp's encode work space: y and x (p floats each) and p codes, rounded to 16.
constexpr std::size_t encode_warp_bytes(const detail::RecordLayout& layout) {
  return (9 * std::size_t{layout.padded_dim} + 15) / 16 * 16;
}

constexpr std::size_t encode_shared_bytes(const detail::RecordLayout& layout) {
  return layout.padded_dim <= kEncodeSharedMaxP ? kVectorWarps * encode_warp_bytes(layout) : 0;
}

constexpr std::size_t decode_warp_bytes(const detail::RecordLayout& layout) {
  return std::size_t{layout.padded_dim} * sizeof(float);
}

constexpr std::size_t decode_shared_bytes(const detail::RecordLayout& layout) {
  return layout.padded_dim <= kDecodeSharedMaxP ? kVectorWarps * decode_warp_bytes(layout) : 0;
}

/// Most warps an encode or decode launch whose work space is in global
/// memory keeps in flight: enough to fill an H200 several times over, while
/// their scratch stays under 256 MiB at the largest p.
constexpr std::size_t global_scratch_warps(std::size_t warp_bytes, std::size_t vectors) {
  const std::size_t budget = std::size_t{256} << 20;
  std::size_t warps = budget / warp_bytes;
  warps = warps < vectors ? warps : vectors;
  warps = warps < 8192 ? warps : 8192;
  return warps > 0 ? (warps + kVectorWarps - 1) / kVectorWarps * kVectorWarps : kVectorWarps;
}

}  // namespace micache::cuda
