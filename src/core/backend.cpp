#include "micache/backend/backend.hpp"

#include <fmt/format.h>

#include "micache/error.hpp"

namespace micache {

void* Backend::allocate(std::size_t bytes, Stream stream) {
  if (bytes == 0) {
    return nullptr;
  }
  std::size_t countdown = fault_countdown_.load(std::memory_order_relaxed);
  while (countdown != 0 &&
         !fault_countdown_.compare_exchange_weak(countdown, countdown - 1, std::memory_order_relaxed)) {
  }
  if (countdown == 1) {
    throw Error(ErrorCode::OutOfMemory,
                fmt::format("allocation of {} bytes on {} failed (injected fault)", bytes,
                            device().to_string()));
  }
  void* ptr = do_allocate(bytes, stream);
  if (ptr == nullptr) {
    throw Error(ErrorCode::OutOfMemory,
                fmt::format("allocation of {} bytes on {} failed ({} bytes in use)", bytes,
                            device().to_string(), in_use_.load(std::memory_order_relaxed)));
  }
  const std::size_t now = in_use_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  std::size_t peak = peak_.load(std::memory_order_relaxed);
  while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  return ptr;
}

void Backend::deallocate(void* ptr, std::size_t bytes, Stream stream) noexcept {
  if (ptr == nullptr) {
    return;
  }
  do_deallocate(ptr, bytes, stream);
  in_use_.fetch_sub(bytes, std::memory_order_relaxed);
}

MemoryStats Backend::memory_stats() const noexcept {
  MemoryStats stats;
  stats.in_use = in_use_.load(std::memory_order_relaxed);
  stats.reserved = reserved_bytes();
  stats.peak = peak_.load(std::memory_order_relaxed);
  stats.trims = trims_.load(std::memory_order_relaxed);
  return stats;
}

void Backend::release_unused_memory(Stream stream) {
  do_release_unused_memory(stream);
  trims_.fetch_add(1, std::memory_order_relaxed);
}

void Backend::reset_peak() noexcept { peak_.store(in_use_.load(std::memory_order_relaxed)); }

void Backend::fail_allocation_after(std::size_t n) noexcept { fault_countdown_.store(n); }

}  // namespace micache
