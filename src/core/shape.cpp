#include "micache/shape.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>
#include <numeric>

namespace micache {

std::size_t Shape::numel() const noexcept {
  return std::accumulate(dims_.begin(), dims_.end(), std::size_t{1}, std::multiplies<>());
}

std::string Shape::to_string() const { return fmt::format("[{}]", fmt::join(dims_, ", ")); }

}  // namespace micache
