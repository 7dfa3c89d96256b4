#include "cpu/cpu_backend.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "micache/backend/backends.hpp"
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
    throw Error(
        ErrorCode::Backend,
        fmt::format("stream {} is not a live cpu stream (destroyed, or made by another backend)", stream.handle));
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

void CpuBackend::wait_stream(Stream waiter, Stream producer) {
  require_live(waiter);
  require_live(producer);
}

std::unique_ptr<Backend> cpu::make_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace micache
