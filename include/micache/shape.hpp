// Dimensions of a contiguous row-major tensor.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>
#include <vector>

namespace micache {

/// Dimensions of a tensor, outermost first: `Shape{1, 12, 7, 7}`.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<std::size_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<std::size_t> dims) : dims_(std::move(dims)) {}

  std::size_t rank() const noexcept { return dims_.size(); }
  std::size_t operator[](std::size_t axis) const { return dims_[axis]; }
  const std::vector<std::size_t>& dims() const noexcept { return dims_; }

  /// Product of the dimensions (1 for rank 0).
  std::size_t numel() const noexcept;

  /// "[1, 12, 7, 7]".
  std::string to_string() const;

  friend bool operator==(const Shape& a, const Shape& b) noexcept { return a.dims_ == b.dims_; }
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

 private:
  std::vector<std::size_t> dims_;
};

}  // namespace micache
