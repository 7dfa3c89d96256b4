#include "micache/device.hpp"

#include <fmt/format.h>

namespace micache {

std::string Device::to_string() const { return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index); }

}  // namespace micache
