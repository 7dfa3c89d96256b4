// Finding the backend for a device, and the devices this build can use.
#pragma once

#include <string>
#include <vector>

#include "micache/backend/backend.hpp"
#include "micache/device.hpp"

namespace micache {

/// The backend that owns `device`, created on first use and alive until exit.
/// The CPU backend is always present.
/// Error: Backend when `device` is CUDA and this build has no CUDA backend,
/// no driver answers, or the index is not a present device (the message says which).
Backend& backend_for(Device device);

/// The CPU, then every CUDA device a driver reports (none in a CPU-only build).
std::vector<Device> available_devices();

/// True when this build has the CUDA backend compiled in.
bool cuda_built() noexcept;

/// Why no CUDA device can be used, or an empty string when at least one can.
std::string cuda_unavailable_reason();

}  // namespace micache
