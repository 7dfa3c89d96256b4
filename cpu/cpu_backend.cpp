#include "cpu/cpu_backend.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "cpu/kernels.hpp"

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
}

void* CpuBackend::do_allocate(std::size_t bytes, Stream) {
  if (bytes > SIZE_MAX - kAlignment) return nullptr;  // rounding up would wrap
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  return std::aligned_alloc(kAlignment, rounded);
}

void CpuBackend::do_deallocate(void* ptr, std::size_t, Stream) noexcept { std::free(ptr); }

void CpuBackend::copy_host_to_device(void* dst, const void* src, std::size_t bytes, Stream) {
  std::memcpy(dst, src, bytes);
}

void CpuBackend::copy_device_to_host(void* dst, const void* src, std::size_t bytes, Stream) {
  std::memcpy(dst, src, bytes);
}

void CpuBackend::copy_device_to_device(void* dst, const void* src, std::size_t bytes, Stream) {
  std::memmove(dst, src, bytes);
}

void CpuBackend::synchronize(Stream) {}

void CpuBackend::convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                         Stream) {
  cpu::convert(src, src_dtype, dst, dst_dtype, count);
}

void CpuBackend::head_mean(const HeadMeanView& view, float* out, Stream) { cpu::head_mean(view, out); }

void CpuBackend::top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices,
                                 float* weights, Stream) {
  cpu::top_k_head_mean(view, k, indices, weights);
}

void CpuBackend::head_mean_column_sums(const HeadMeanView& view, float* out, Stream) {
  cpu::head_mean_column_sums(view, out);
}

std::size_t CpuBackend::find_non_finite(const void* data, DType dtype, std::size_t count, Stream) {
  return cpu::find_non_finite(data, dtype, count);
}

void CpuBackend::encode_records(const RecordEncode& encode, Stream) { cpu::encode_records(encode); }

void CpuBackend::score_records(const RecordQuery& query, float* scores, Stream) { cpu::score_records(query, scores); }

void CpuBackend::attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream) {
  cpu::attend_records(query, values, out);
}

void CpuBackend::decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream) {
  cpu::decode_records(ring, tokens, out);
}

void CpuBackend::copy_tokens(const TokenCopy& copy, Stream) { cpu::copy_tokens(copy); }

}  // namespace micache
