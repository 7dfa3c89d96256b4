// Byte counters a backend keeps for its device.
#pragma once

#include <cstddef>

namespace micache {

/// A backend's memory accounting, read without synchronising the device.
struct MemoryStats {
  std::size_t in_use = 0;  ///< bytes currently allocated through the backend
  /// Bytes the backend holds from the system: `in_use` plus, with a pool,
  /// the free blocks it keeps for reuse until `Backend::release_unused_memory`.
  std::size_t reserved = 0;
  std::size_t peak = 0;    ///< largest `in_use` since creation or the last `reset_peak()`
  std::size_t trims = 0;   ///< calls of `Backend::release_unused_memory` that returned
};

}  // namespace micache
