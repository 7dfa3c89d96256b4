// Private: how the registry reaches the CUDA backend.
#pragma once

#include <memory>
#include <string>

#include "micache/backend/backend.hpp"

namespace micache::cuda {

/// Number of CUDA devices a driver reports; 0 with `reason` set when none can be used.
int device_count(std::string& reason) noexcept;

/// The backend of CUDA device `index` (0 <= index < device_count()).
std::unique_ptr<Backend> make_backend(int index);

}  // namespace micache::cuda
