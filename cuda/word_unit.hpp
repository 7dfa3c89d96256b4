// Private, host-safe (g++ and nvcc, C++17): the widest aligned word a copy kernel can move.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace micache::cuda {

/// The widest word (16, 8, 4, 2 or 1 bytes) dividing every value whose bits
/// are OR-ed into `bits` (byte sizes and addresses): its lowest set bit, at most 16.
constexpr std::size_t widest_unit_of_bits(std::uintptr_t bits) {
  bits |= 16;
  return static_cast<std::size_t>(bits & (~bits + 1));
}

/// The widest word dividing every one of `values`, so that every access of a
/// kernel moving such words is aligned. O(count).
inline std::size_t widest_unit(std::initializer_list<std::uintptr_t> values) {
  std::uintptr_t bits = 0;
  for (const std::uintptr_t value : values) bits |= value;
  return widest_unit_of_bits(bits);
}

}  // namespace micache::cuda
