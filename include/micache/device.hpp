// Where a tensor lives: the host or one CUDA device.
#pragma once

#include <string>

namespace micache {

enum class DeviceKind { Cpu, Cuda };

/// A device: `Device::cpu()` or `Device::cuda(index)`.
///
/// Constructing `Device::cuda(i)` never fails; using it (allocating on it,
/// asking for its backend) throws `Error(ErrorCode::Backend)` naming the
/// reason when this build has no CUDA backend, no driver answers, or device
/// `i` does not exist. There is never a silent fall back to the CPU.
struct Device {
  DeviceKind kind = DeviceKind::Cpu;
  int index = 0;

  static constexpr Device cpu() noexcept { return Device{DeviceKind::Cpu, 0}; }
  static constexpr Device cuda(int index = 0) noexcept { return Device{DeviceKind::Cuda, index}; }

  /// CUDA device 0 when this build has CUDA and a driver reports a device,
  /// else the CPU. Defined with the registry, which owns the probe (registry.hpp).
  static Device best();

  constexpr bool is_cpu() const noexcept { return kind == DeviceKind::Cpu; }
  constexpr bool is_cuda() const noexcept { return kind == DeviceKind::Cuda; }

  /// "cpu" or "cuda:0".
  std::string to_string() const;

  friend constexpr bool operator==(const Device& a, const Device& b) noexcept {
    return a.kind == b.kind && (a.kind == DeviceKind::Cpu || a.index == b.index);
  }
};

}  // namespace micache
