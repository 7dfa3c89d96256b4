// An execution stream handle passed to backend calls.
// C++17: included by .cu files.
#pragma once

namespace micache {

/// A backend's stream: on CUDA a `cudaStream_t` (null is the default
/// stream); ignored by the CPU backend, which runs calls in order on the
/// calling thread.
struct Stream {
  void* handle = nullptr;
};

}  // namespace micache
