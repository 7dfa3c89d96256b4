// Byte counters a backend keeps for its device.
#pragma once

#include <cstddef>

namespace micache {

/// A backend's memory accounting, read without synchronising the device.
struct MemoryStats {
  std::size_t in_use = 0;    ///< bytes currently allocated through the backend
  std::size_t reserved = 0;  ///< bytes the backend holds from the system (>= in_use with a pool)
  std::size_t peak = 0;      ///< largest `in_use` since creation or the last `reset_peak()`
};

}  // namespace micache
