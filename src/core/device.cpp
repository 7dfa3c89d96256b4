#include "micache/device.hpp"

#include <fmt/format.h>

#include "micache/registry.hpp"

namespace micache {

Device Device::best() {
  return cuda_unavailable_reason().empty() ? Device::cuda(0) : Device::cpu();
}

std::string Device::to_string() const {
  return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index);
}

}  // namespace micache
