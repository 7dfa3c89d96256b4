#include "src/core/checks.hpp"

#include <fmt/format.h>

namespace micache::detail {

void require_defined(const Tensor& tensor, std::string_view what) {
  if (!tensor.defined()) throw Error(ErrorCode::Config, fmt::format("{}: undefined tensor", what));
}

void require_float_dtype(DType dtype, std::string_view what, ErrorCode code) {
  if (!is_float_dtype(dtype)) {
    throw Error(code, fmt::format("{} must be f32, f16 or bf16, got {}", what, dtype_name(dtype)));
  }
}

void require_device(Device actual, Device expected, std::string_view what) {
  if (!(actual == expected)) {
    throw Error(ErrorCode::Config,
                fmt::format("{} on {}, the cache on {}", what, actual.to_string(), expected.to_string()));
  }
}

void require_rank(const Tensor& tensor, std::size_t rank, std::string_view what, std::string_view layout) {
  if (tensor.rank() != rank) {
    throw Error(ErrorCode::Shape, fmt::format("{} must be {}, got rank {} {}", what, layout, tensor.rank(),
                                              tensor.shape().to_string()));
  }
}

void require_index(std::size_t index, std::size_t count, std::string_view what, std::string_view bound) {
  if (index >= count) throw Error(ErrorCode::Hook, fmt::format("{} {} out of range ({}={})", what, index, bound, count));
}

}  // namespace micache::detail
