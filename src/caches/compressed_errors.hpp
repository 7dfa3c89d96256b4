// Private: the compressed caches' wording of DimensionMismatch and NonFiniteInput (bitpolar's), one each.
#pragma once

#include <fmt/format.h>

#include <cstddef>
#include <string_view>

#include "micache/error.hpp"

namespace micache::detail {

/// DimensionMismatch `"dimension mismatch: quantizer expects {expected}, got {actual} ({where})"`.
inline Error dimension_mismatch(std::size_t expected, std::size_t actual, std::string_view where) {
  return Error(ErrorCode::DimensionMismatch,
               fmt::format("dimension mismatch: quantizer expects {}, got {} ({})", expected, actual, where));
}

/// NonFiniteInput `"input contains non-finite values (NaN or Inf) at index {index} ({where})"`.
inline Error non_finite_input(std::size_t index, std::string_view where) {
  return Error(ErrorCode::NonFiniteInput,
               fmt::format("input contains non-finite values (NaN or Inf) at index {} ({})", index, where));
}

}  // namespace micache::detail
