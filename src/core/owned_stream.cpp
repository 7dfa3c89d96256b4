#include "micache/owned_stream.hpp"

#include <utility>

#include "micache/registry.hpp"

namespace micache {

OwnedStream::OwnedStream(Device device) : device_(device), stream_(backend_for(device).create_stream()) {}

OwnedStream::OwnedStream(OwnedStream&& other) noexcept
    : device_(other.device_), stream_(std::exchange(other.stream_, Stream{})) {}

OwnedStream& OwnedStream::operator=(OwnedStream&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = other.device_;
    stream_ = std::exchange(other.stream_, Stream{});
  }
  return *this;
}

OwnedStream::~OwnedStream() { reset(); }

void OwnedStream::synchronize() const { backend_for(device_).synchronize(stream_); }

void OwnedStream::reset() noexcept {
  if (stream_.handle != nullptr) {
    backend_for(device_).destroy_stream(std::exchange(stream_, Stream{}));
  }
}

}  // namespace micache
