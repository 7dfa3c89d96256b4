#include <cmath>

#include "cpu/cpu_backend.hpp"

namespace micache {

// Memory access: one sequential read of each element up to the first bad one.
std::size_t CpuBackend::find_non_finite(const void* data, DType dtype, std::size_t count, Stream stream) {
  require_live(stream);
  for (std::size_t i = 0; i < count; ++i) {
    if (!std::isfinite(load_as_f32(data, dtype, i))) return i;
  }
  return count;
}

}  // namespace micache
