// Private: typed views into one packed device buffer (a step's plan, an accounting's answer), each array at a
// 16-byte boundary, keeping the buffer alive.
#pragma once

#include <cstddef>
#include <utility>

#include "micache/dtype.hpp"
#include "micache/shape.hpp"
#include "micache/tensor.hpp"

namespace micache::detail {

/// `bytes` rounded up to the next multiple of 16, where a packed buffer's next array starts.
constexpr std::size_t aligned16(std::size_t bytes) noexcept { return (bytes + 15) & ~std::size_t{15}; }

/// A `shape` tensor of `dtype` at byte `offset` of `buffer` (a U8 device
/// tensor), on the buffer's device and stream, keeping the buffer alive.
inline Tensor packed_view(const Tensor& buffer, std::size_t offset, Shape shape, DType dtype) {
  auto* data = static_cast<std::byte*>(const_cast<void*>(buffer.data())) + offset;
  return Tensor::wrap(
      data, std::move(shape), dtype, buffer.device(), [keep = buffer] { static_cast<void>(keep); }, buffer.stream());
}

}  // namespace micache::detail
