#include "cpu/cpu_backend.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "cpu/kernels.hpp"
#include "micache/error.hpp"

namespace micache {

std::string CpuBackend::description() const {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string model = "unknown CPU";
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " hardware threads (kernels run on one)";
}

namespace {
constexpr std::size_t kAlignment = 256;

std::uintptr_t stream_id(Stream stream) { return reinterpret_cast<std::uintptr_t>(stream.handle); }
}  // namespace

Stream CpuBackend::create_stream() {
  const std::unique_lock lock(streams_mutex_);
  const std::uintptr_t id = next_stream_++;
  live_streams_.insert(id);
  return Stream{reinterpret_cast<void*>(id)};
}

void CpuBackend::destroy_stream(Stream stream) noexcept {
  const std::unique_lock lock(streams_mutex_);
  live_streams_.erase(stream_id(stream));
}

void CpuBackend::require_live(Stream stream) const {
  if (stream.handle == nullptr) return;
  const std::shared_lock lock(streams_mutex_);
  if (live_streams_.count(stream_id(stream)) == 0) {
    throw Error(ErrorCode::Backend,
                fmt::format("stream {} is not a live cpu stream (destroyed, or made by another backend)",
                            stream.handle));
  }
}

void* CpuBackend::do_allocate(std::size_t bytes, Stream stream) {
  require_live(stream);
  if (bytes > SIZE_MAX - kAlignment) return nullptr;  // rounding up would wrap
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  return std::aligned_alloc(kAlignment, rounded);
}

void CpuBackend::do_deallocate(void* ptr, std::size_t, Stream) noexcept { std::free(ptr); }

void CpuBackend::do_release_unused_memory(Stream stream) { require_live(stream); }

void CpuBackend::copy_host_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  require_live(stream);
  std::memcpy(dst, src, bytes);
}

void CpuBackend::copy_device_to_host(void* dst, const void* src, std::size_t bytes, Stream stream) {
  require_live(stream);
  std::memcpy(dst, src, bytes);
}

void CpuBackend::copy_device_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  require_live(stream);
  std::memmove(dst, src, bytes);
}

void CpuBackend::synchronize(Stream stream) { require_live(stream); }

void CpuBackend::convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                         Stream stream) {
  require_live(stream);
  cpu::convert(src, src_dtype, dst, dst_dtype, count);
}

void CpuBackend::head_mean(const HeadMeanView& view, float* out, Stream stream) {
  require_live(stream);
  cpu::head_mean(view, out);
}

void CpuBackend::top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices,
                                 float* weights, Stream stream) {
  require_live(stream);
  cpu::top_k_head_mean(view, k, indices, weights);
}

void CpuBackend::head_mean_column_sums(const HeadMeanView& view, float* out, Stream stream) {
  require_live(stream);
  cpu::head_mean_column_sums(view, out);
}

std::size_t CpuBackend::find_non_finite(const void* data, DType dtype, std::size_t count, Stream stream) {
  require_live(stream);
  return cpu::find_non_finite(data, dtype, count);
}

void CpuBackend::encode_records(const RecordEncode& encode, Stream stream) {
  require_live(stream);
  cpu::encode_records(encode);
}

void CpuBackend::score_records(const RecordQuery& query, float* scores, Stream stream) {
  require_live(stream);
  cpu::score_records(query, scores);
}

void CpuBackend::attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream stream) {
  require_live(stream);
  cpu::attend_records(query, values, out);
}

void CpuBackend::decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream stream) {
  require_live(stream);
  cpu::decode_records(ring, tokens, out);
}

void CpuBackend::copy_tokens(const TokenCopy& copy, Stream stream) {
  require_live(stream);
  cpu::copy_tokens(copy);
}

}  // namespace micache
