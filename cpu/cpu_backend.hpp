// CpuBackend: host memory and the reference kernels. Memory, copies and
// streams are defined in cpu_backend.cpp; each kernel method in the file of its
// operation (head_mean.cpp: head_mean and head_mean_column_sums; top_k.cpp;
// convert.cpp; find_non_finite.cpp; token_copy.cpp; paged_kv.cpp: write,
// gather and move; paged_tables.cpp: step build and accounting;
// paged_attention.cpp: decode attention; compressed.cpp: encode,
// score, attend and decode of records).
#pragma once

#include <cstdint>
#include <shared_mutex>
#include <unordered_set>

#include "micache/backend/backend.hpp"

namespace micache {

/// The CPU implementation of Backend: host memory (256-byte aligned) and the
/// reference kernels, in plain C++ on the calling thread: every call
/// has finished when it returns, so streams order nothing here. A stream is a
/// checked handle instead: every call given one other than null throws
/// Error(Backend) unless `create_stream` made it and it is not yet destroyed,
/// so code written for CUDA streams runs unchanged on the CPU and a stream
/// used after its destruction (undefined behaviour on CUDA) is reported.
class CpuBackend final : public Backend {
 public:
  Device device() const noexcept override { return Device::cpu(); }
  const char* name() const noexcept override { return "cpu"; }
  std::string description() const override;

  void copy_host_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) override;
  void copy_device_to_host(void* dst, const void* src, std::size_t bytes, Stream stream) override;
  void copy_device_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) override;
  void synchronize(Stream stream) override;
  void wait_stream(Stream waiter, Stream producer) override;
  Stream create_stream() override;
  void destroy_stream(Stream stream) noexcept override;

  // Kernels: the reference every backend matches bit for bit (scores and
  // attention to a tolerance), one file per operation (see above).
  void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count, Stream stream) override;
  void head_mean(const HeadMeanView& view, float* out, Stream stream) override;
  void top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                       Stream stream) override;
  void head_mean_column_sums(const HeadMeanView& view, float* out, Stream stream) override;
  std::size_t find_non_finite(const void* data, DType dtype, std::size_t count, Stream stream) override;
  void encode_records(const RecordEncode& encode, Stream stream) override;
  void score_records(const RecordQuery& query, float* scores, Stream stream) override;
  void attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream stream) override;
  void decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream stream) override;
  void copy_tokens(const TokenCopy& copy, Stream stream) override;
  void paged_write(const PagedWrite& write, Stream stream) override;
  void paged_gather(const PagedGather& gather, Stream stream) override;
  void paged_move(const PagedMove& move, Stream stream) override;
  void paged_build_step(const PagedStepBuild& build, Stream stream) override;
  void paged_accounting(const PagedAccounting& accounting, Stream stream) override;
  void paged_decode_attention(const PagedDecodeAttention& attention, Stream stream) override;

 protected:
  void* do_allocate(std::size_t bytes, Stream stream) override;
  void do_deallocate(void* ptr, std::size_t bytes, Stream stream) noexcept override;
  // Host memory goes back to the C library at every deallocation: nothing to
  // release but the stream to check.
  void do_release_unused_memory(Stream stream) override;

 private:
  // Error(Backend) unless `stream` is null or live.
  void require_live(Stream stream) const;

  mutable std::shared_mutex streams_mutex_;
  std::unordered_set<std::uintptr_t> live_streams_;
  // Handles count up from here and are never reused; 1 and 2 are CUDA's
  // cudaStreamLegacy and cudaStreamPerThread, so CPU handles never equal them.
  std::uintptr_t next_stream_ = 0x100;
};

}  // namespace micache
