// The seam between caches and numeric work: one interface, one implementation per device kind.
// C++17: included by the CUDA backend.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "micache/backend/compressed_records.hpp"
#include "micache/backend/head_mean_view.hpp"
#include "micache/backend/paged_attention.hpp"
#include "micache/backend/paged_kv.hpp"
#include "micache/backend/paged_tables.hpp"
#include "micache/backend/token_copy.hpp"
#include "micache/device.hpp"
#include "micache/dtype.hpp"
#include "micache/memory_stats.hpp"
#include "micache/stream.hpp"

namespace micache {

/// Most columns a top-k row may have: indices are int32 on every backend, so
/// callers reject longer rows (Shape) before calling `top_k_head_mean`.
inline constexpr std::size_t kMaxTopKColumns = 0x7fffffff;

/// Rows per partial sum of `Backend::head_mean_column_sums` (fixes its summation order).
inline constexpr std::size_t kColumnSumChunkRows = 64;

/// Memory, copies and kernels for one device. Caches validate, keep their
/// bookkeeping and call a Backend for every byte they touch; a Backend knows
/// nothing of caches: it takes plain shapes, dtypes, raw buffers and a stream.
///
/// `CpuBackend` (cpu/) is the reference; `CudaBackend` (cuda/) mirrors it
/// kernel for kernel and gives bit-identical results. Obtain one with
/// `backend_for(Device)` (registry.hpp).
///
/// Allocation is accounted here, not in the implementations (the non-virtual
/// `allocate`/`deallocate` wrap `do_allocate`/`do_deallocate`), so every
/// backend reports the same counters and supports the same fault injection.
///
/// Thread safety: every member function may be called from several threads at
/// once; kernels writing the same output buffer must not overlap.
class Backend {
 public:
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
  virtual ~Backend() = default;

  virtual Device device() const noexcept = 0;
  /// "cpu" or "cuda".
  virtual const char* name() const noexcept = 0;
  /// The hardware in words, for logs and benchmark reports: the CPU model and
  /// thread count, or the GPU's name, compute capability, SM count and memory.
  virtual std::string description() const = 0;

  // ---- memory ------------------------------------------------------------

  /// Allocates `bytes` (0 gives nullptr), aligned to at least 256 bytes.
  /// Error: OutOfMemory (counters unchanged) when the device or an armed
  /// fault (`fail_allocation_after`) refuses it.
  void* allocate(std::size_t bytes, Stream stream = {});
  /// Releases memory from `allocate` with the same `bytes`. Null is ignored.
  void deallocate(void* ptr, std::size_t bytes, Stream stream = {}) noexcept;
  /// Counters, read without synchronising the device.
  MemoryStats memory_stats() const noexcept;
  /// Sets `peak` to the current `in_use`.
  void reset_peak() noexcept;
  /// Fault injection: the `n`-th allocation from now (1 = the next) throws
  /// OutOfMemory, then injection disarms. `n = 0` disarms.
  void fail_allocation_after(std::size_t n) noexcept;
  /// Returns to the system the memory this backend holds but no allocation
  /// uses. Synchronises `stream` first, so that blocks freed on it are free,
  /// then releases every free block the device can release. CUDA: after
  /// cudaStreamSynchronize, cudaMemPoolTrimTo(pool, 0) on micache's pool
  /// (blocks freed on another stream whose work is still queued stay
  /// reserved); without a pool (MICACHE_CUDA_ALLOCATOR=plain, the CPU) there
  /// is nothing to release. Each call that returns adds one to
  /// `memory_stats().trims`. Not capturable in a CUDA graph (it synchronises).
  /// Error: Backend when the device fails or `stream` is not a live stream of
  /// this backend. Complexity: the wait, plus O(free blocks of the pool).
  void release_unused_memory(Stream stream = {});

  // ---- errors ------------------------------------------------------------

  /// Device errors met by calls that cannot throw (`deallocate`,
  /// `destroy_stream`, a backend's destruction, restoring the caller's current
  /// device after a call), counted since the process started. Each is cleared
  /// where it happens, so that no later call reports it as its own, and the
  /// first of the process is written once to stderr. CUDA: one count for all
  /// CUDA backends (the runtime keeps one error state per thread, not per
  /// device). CPU: always 0 (its noexcept calls cannot fail).
  virtual std::size_t deferred_errors() const noexcept { return 0; }

  // ---- streams ---------------------------------------------------------

  /// A new stream of this device (see OwnedStream, which owns one). CUDA: a
  /// `cudaStream_t` made with default flags, so it is ordered against the
  /// legacy default stream like every blocking stream. CPU: a checked handle.
  /// Error: Backend when the device refuses.
  virtual Stream create_stream() = 0;
  /// Destroys a stream from `create_stream` once its queued work is done;
  /// null is ignored. Memory allocated on it must be freed before this.
  virtual void destroy_stream(Stream stream) noexcept = 0;

  // ---- copies (stream-ordered; device-to-host returns once the host data is ready)

  virtual void copy_host_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) = 0;
  virtual void copy_device_to_host(void* dst, const void* src, std::size_t bytes, Stream stream) = 0;
  virtual void copy_device_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) = 0;
  /// Waits for all work queued on `stream`.
  virtual void synchronize(Stream stream) = 0;
  /// Makes the work queued on `waiter` from now on wait for the work queued
  /// on `producer` so far, without blocking the host (torch's
  /// `Stream.wait_stream`); either may be another library's stream. CUDA: an
  /// event recorded on `producer` that `waiter` waits on (capture-safe: both
  /// calls are captured into a graph as a dependency). CPU: work is done when
  /// it is queued, so the streams are only checked. Same stream: nothing to
  /// do. Error: Backend when the device refuses (CPU: a stream not live).
  virtual void wait_stream(Stream waiter, Stream producer) = 0;

  // ---- kernels ----------------------------------------------------------

  /// Converts `count` elements between float dtypes (F32, F16, BF16), round to
  /// nearest even, NaN kept. Bytes moved: count * (size(src) + size(dst)).
  virtual void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                       Stream stream) = 0;

  /// Writes the `n_rows x n_cols` head means of `view` (see HeadMeanView) to
  /// `out`, row-major f32. Reads heads * n_rows * n_cols elements once.
  virtual void head_mean(const HeadMeanView& view, float* out, Stream stream) = 0;

  /// For each of the `n_rows` rows of head means of `view`, the `k` largest
  /// (1 <= k <= n_cols <= kMaxTopKColumns) in the order of detail::top_k_key:
  /// `indices[r*k + j]` is the column of the j-th, `weights[r*k + j]` its head
  /// mean. The CPU partially sorts each row; CUDA chooses its path by k
  /// (cuda/row_split.hpp: warp-level selection up to cuda::kWarpTopKMax, a
  /// row split over several blocks when there are few rows; a radix select up
  /// to k = 1024; a sort of each row beyond). No path synchronises the host.
  virtual void top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                               Stream stream) = 0;

  /// For each column c < n_cols of `view`, the sum over its n_rows rows of the
  /// head means into `out[c]` (f32): rows are added in order within chunks of
  /// kColumnSumChunkRows rows, then the chunk sums are added in chunk order,
  /// so every backend gives the same bits. Reads heads * n_rows * n_cols
  /// elements once. (The attention each key receives, for H2O eviction.)
  virtual void head_mean_column_sums(const HeadMeanView& view, float* out, Stream stream) = 0;

  /// Index of the first NaN or infinity among `count` elements of float
  /// `dtype` at `data`, or `count` when all are finite. Synchronises `stream`.
  virtual std::size_t find_non_finite(const void* data, DType dtype, std::size_t count, Stream stream) = 0;

  /// Encodes vectors into compressed records (see RecordEncode): rotation,
  /// codes, norm and QJL sign bits exactly as detail::encode_record, so every
  /// backend writes the same bytes. O(p log p + m p) per vector.
  virtual void encode_records(const RecordEncode& encode, Stream stream) = 0;

  /// Pre-softmax scores of every query head against every key record (see
  /// RecordQuery): `scores[q * tokens + t]`. Each query is prepared once;
  /// each score then reads one record. Agrees across backends to rounding.
  virtual void score_records(const RecordQuery& query, float* scores, Stream stream) = 0;

  /// Attention output per query head: softmax over t of the scores of
  /// `query`, times the decoded value records `[0, query.tokens)` of `values`
  /// (query head q reads value head q / group_size), accumulated in the
  /// rotated domain and rotated back once: `out[q * dim + i]`. tokens >= 1.
  virtual void attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream stream) = 0;

  /// Decodes logical records `[0, tokens)` of every head of `ring` into
  /// `out[(h * tokens + t) * dim + i]` (detail::decode_record).
  virtual void decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream stream) = 0;

  /// Copies tokens between ring buffers (see TokenCopy): KV append, ring
  /// compaction, growth and dense gathers. One launch on CUDA.
  virtual void copy_tokens(const TokenCopy& copy, Stream stream) = 0;

  /// Writes new tokens' keys and values into their page slots (see
  /// PagedWrite): the per-layer write of a serving step. One launch on CUDA,
  /// no allocation, no synchronisation: capturable in a CUDA graph.
  virtual void paged_write(const PagedWrite& write, Stream stream) = 0;

  /// Gathers one sequence's tokens from its pages into dense keys and values
  /// (see PagedGather). One launch on CUDA.
  virtual void paged_gather(const PagedGather& gather, Stream stream) = 0;

  /// Moves tokens between page slots, keys and values of every head (see
  /// PagedMove): the compaction of a paged cache. One launch on CUDA, no
  /// allocation, no synchronisation: capturable in a CUDA graph.
  virtual void paged_move(const PagedMove& move, Stream stream) = 0;

  /// Applies a step's page-table updates to the resident tables and builds
  /// its slot mapping and FlashInfer metadata from them (see PagedStepBuild).
  /// One launch on CUDA (none for an empty batch): a block per entry, which
  /// sums the pages and new tokens of the entries before it itself, so
  /// O(batch^2) reads of entry lengths in all (from cache; a batch of a few
  /// thousand is cheap) and O((batch + the entry's updates, pages and new
  /// tokens) / threads) steps per block. No allocation, no
  /// synchronisation: capturable in a CUDA graph.
  virtual void paged_build_step(const PagedStepBuild& build, Stream stream) = 0;

  /// Per-sequence and pool accounting from the resident tables (see
  /// PagedAccounting), exactly the host counters. One launch on CUDA, one
  /// block: O((num_pages + batch) / threads + live / warps * (1 + the
  /// longest live row's pages / 32)) steps, O(num_pages + pages of the live
  /// rows + batch) work. No allocation (the scratch is the caller's), no
  /// synchronisation: capturable in a CUDA graph.
  virtual void paged_accounting(const PagedAccounting& accounting, Stream stream) = 0;

  /// Decode attention of a batch of requests over their pages, reading
  /// FlashInfer's paged metadata (see PagedDecodeAttention: shapes, GQA, the
  /// order every backend follows; head_dim <= kPagedAttentionMaxHeadDim).
  /// The CPU's answer bit for bit but for exp and log, which may differ by an
  /// ulp. One launch on CUDA, no allocation, no synchronisation: capturable
  /// in a CUDA graph. O(tokens * qo_heads * head_dim) per request.
  virtual void paged_decode_attention(const PagedDecodeAttention& attention, Stream stream) = 0;

 protected:
  /// Returns nullptr when the device has no memory for `bytes` (> 0).
  virtual void* do_allocate(std::size_t bytes, Stream stream) = 0;
  virtual void do_deallocate(void* ptr, std::size_t bytes, Stream stream) noexcept = 0;
  /// The device's part of `release_unused_memory` (which counts the call);
  /// does nothing by default, for a backend that keeps no pool.
  virtual void do_release_unused_memory(Stream stream) { static_cast<void>(stream); }
  /// Bytes held from the system; defaults to bytes in use (no pool).
  virtual std::size_t reserved_bytes() const noexcept { return bytes_in_use(); }
  std::size_t bytes_in_use() const noexcept { return in_use_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::size_t> in_use_{0};
  std::atomic<std::size_t> peak_{0};
  std::atomic<std::size_t> fault_countdown_{0};
  std::atomic<std::size_t> trims_{0};
};

}  // namespace micache
