// An execution stream handle passed to backend calls.
// C++17: included by .cu files.
#pragma once

namespace micache {

/// A backend's stream: on CUDA a `cudaStream_t` (null is the legacy default
/// stream); on the CPU, where every call has finished when it returns, a
/// handle from `Backend::create_stream` that the backend only checks is live.
/// Null (the default) is the default stream on every backend.
///
/// Work given the same stream runs in the order it was issued. Work on two
/// streams may overlap; ordering across streams is the caller's (see
/// OwnedStream for how blocking streams order with the default stream).
struct Stream {
  void* handle = nullptr;

  friend constexpr bool operator==(Stream a, Stream b) noexcept { return a.handle == b.handle; }
  friend constexpr bool operator!=(Stream a, Stream b) noexcept { return a.handle != b.handle; }
};

}  // namespace micache
