// OwnedStream: a backend stream created and destroyed with one object.
#pragma once

#include "micache/device.hpp"
#include "micache/stream.hpp"

namespace micache {

/// A stream of `device`, made by its backend (`Backend::create_stream`) and
/// destroyed with this object; move-only. Give `get()` to a cache's
/// constructor so that the cache runs its device work there, apart from the
/// work of other threads' caches.
///
/// On CUDA it is a `cudaStream_t` with default flags (a blocking stream):
/// work on it and on the legacy default stream never overlap, so tensors made
/// on the default stream are ready for it and memory freed on the default
/// stream waits for it; two OwnedStreams overlap freely. On the CPU it is a
/// checked handle (see CpuBackend).
///
/// Lifetime: destroy it only after every cache built on it and every tensor
/// allocated on it is gone (they return their memory on it). Destruction does
/// not wait: queued work still completes.
///
/// Thread safety: `get`, `device` and `synchronize` may be called from several
/// threads at once.
class OwnedStream {
 public:
  /// Error: Backend when `device` is unusable or refuses a stream.
  explicit OwnedStream(Device device = Device::cpu());
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  OwnedStream(OwnedStream&& other) noexcept;
  OwnedStream& operator=(OwnedStream&& other) noexcept;
  ~OwnedStream();

  /// The handle; null once moved from or reset.
  Stream get() const noexcept { return stream_; }
  Device device() const noexcept { return device_; }

  /// Waits until all work queued on the stream is done.
  void synchronize() const;

  /// Destroys the stream now; `get()` is null after.
  void reset() noexcept;

 private:
  Device device_;
  Stream stream_;
};

}  // namespace micache
