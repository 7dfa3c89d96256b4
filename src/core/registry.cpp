// The registry: one backend per device, created on first use, never destroyed
// (tensors in static objects may outlive any destruction order we could pick).
#include "micache/registry.hpp"

#include <fmt/format.h>

#include <array>
#include <memory>
#include <mutex>

#include "micache/backend/backends.hpp"
#include "micache/error.hpp"

namespace micache {
namespace {

#if MICACHE_WITH_CUDA
struct CudaProbe {
  int count = 0;
  std::string reason;
};

const CudaProbe& cuda_probe() {
  static const CudaProbe probe = [] {
    CudaProbe result;
    result.count = cuda::device_count(result.reason);
    return result;
  }();
  return probe;
}

Backend& cuda_backend(int index) {
  static std::mutex mutex;
  static std::array<Backend*, 64> backends{};
  const CudaProbe& probe = cuda_probe();
  if (probe.count == 0) {
    throw Error(ErrorCode::Backend, fmt::format("cuda:{} is unavailable: {}", index, probe.reason));
  }
  if (index < 0 || index >= probe.count || index >= static_cast<int>(backends.size())) {
    throw Error(ErrorCode::Backend, fmt::format("cuda:{} is not present ({} CUDA device(s))", index, probe.count));
  }
  const std::lock_guard lock(mutex);
  Backend*& slot = backends[static_cast<std::size_t>(index)];
  if (slot == nullptr) {
    slot = cuda::make_backend(index).release();
  }
  return *slot;
}
#endif

}  // namespace

bool cuda_built() noexcept {
#if MICACHE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_unavailable_reason() {
#if MICACHE_WITH_CUDA
  return cuda_probe().count > 0 ? std::string() : cuda_probe().reason;
#else
  return "micache was built without CUDA (configure with -DMICACHE_ENABLE_CUDA=ON)";
#endif
}

Backend& backend_for(Device device) {
  if (device.is_cpu()) {
    static Backend* const cpu = cpu::make_backend().release();
    return *cpu;
  }
#if MICACHE_WITH_CUDA
  return cuda_backend(device.index);
#else
  throw Error(ErrorCode::Backend, fmt::format("{} requested: {}", device.to_string(), cuda_unavailable_reason()));
#endif
}

// Defined here, beside the probe it asks, so device.cpp needs no registry.
Device Device::best() { return cuda_unavailable_reason().empty() ? Device::cuda(0) : Device::cpu(); }

std::vector<Device> available_devices() {
  std::vector<Device> devices{Device::cpu()};
#if MICACHE_WITH_CUDA
  for (int i = 0; i < cuda_probe().count; ++i) {
    devices.push_back(Device::cuda(i));
  }
#endif
  return devices;
}

}  // namespace micache
