// The backends a build has: the entry points through which the registry
// (src/core/registry.cpp) creates each one, so the registry includes no
// backend's own header. Each backend folder defines its entry points.
// C++17: included by the CUDA backend.
#pragma once

#include <memory>
#include <string>

#include "micache/backend/backend.hpp"

namespace micache {

namespace cpu {
/// The CPU backend, the reference (defined in cpu/cpu_backend.cpp). The
/// registry makes one, at first use, and keeps it to the end of the process.
std::unique_ptr<Backend> make_backend();
}  // namespace cpu

/// Defined in cuda/cuda_backend.cpp, only in builds with MICACHE_ENABLE_CUDA=ON
/// (the registry calls them only there).
namespace cuda {
/// Number of CUDA devices a driver reports; 0 with `reason` set when none can be used.
int device_count(std::string& reason) noexcept;

/// The backend of CUDA device `index` (0 <= index < device_count()).
std::unique_ptr<Backend> make_backend(int index);
}  // namespace cuda

}  // namespace micache
