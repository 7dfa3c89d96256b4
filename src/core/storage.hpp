// Private: the block of memory behind one or more Tensor handles.
#pragma once

#include <cstddef>
#include <functional>

#include "micache/backend/backend.hpp"
#include "micache/device.hpp"

namespace micache::detail {

/// Owns `bytes` at `ptr` on `device`, allocated on `stream`: returned to
/// `backend` on that stream on destruction, or handed to `release` when the
/// memory was wrapped from the caller.
struct Storage {
  Storage(Backend& owner, std::size_t size, Stream on);
  Storage(void* data, Device where, std::function<void()> on_release, Stream on) noexcept
      : ptr(data), device(where), stream(on), release(std::move(on_release)) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  void* ptr = nullptr;
  std::size_t bytes = 0;
  Device device;
  Stream stream;
  Backend* backend = nullptr;
  std::function<void()> release;
};

}  // namespace micache::detail
