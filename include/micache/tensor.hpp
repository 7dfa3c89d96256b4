// Tensor: a reference-counted handle to contiguous row-major storage on one device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "micache/device.hpp"
#include "micache/dtype.hpp"
#include "micache/shape.hpp"
#include "micache/stream.hpp"

namespace micache {

namespace detail {
struct Storage;
}

/// A reference-counted handle to contiguous, row-major storage on one device.
///
/// Copying a Tensor copies the handle, not the data (like a shared_ptr); the
/// storage is released when the last handle goes away. `select` makes views
/// that share the storage. Storage allocated by micache is accounted by the
/// device's Backend (see `Backend::memory_stats`); storage wrapped with `wrap`
/// belongs to the caller and is not.
///
/// Streams: storage is allocated on a stream (`stream()`, null by default) and
/// returned to the backend on it when released; copies out of the tensor
/// (`to_host_*`, `to` the host) run on it and wait for it. A tensor read on
/// another stream must stay alive until that stream has read it.
///
/// Thread safety: const member functions may be called concurrently; the
/// handle itself is not internally synchronised (as std::shared_ptr).
class Tensor {
 public:
  /// An undefined tensor: `defined()` is false, every other query throws.
  Tensor() = default;

  /// Copies `values` to a new tensor of `shape` on `device`, converting each
  /// value to `dtype` on the host (round to nearest even, NaN kept).
  /// Errors: Shape when `values.size() != shape.numel()`; Config when `dtype`
  /// is not a float type; Backend / OutOfMemory from the device.
  static Tensor from_host(std::span<const float> values, Shape shape, DType dtype,
                          Device device = Device::cpu(), Stream stream = {});

  /// Copies I32 `values` to a new I32 tensor. Errors as `from_host`.
  static Tensor from_host_i32(std::span<const std::int32_t> values, Shape shape,
                              Device device = Device::cpu(), Stream stream = {});
  /// Copies I64 `values` to a new I64 tensor. Errors as `from_host`.
  static Tensor from_host_i64(std::span<const std::int64_t> values, Shape shape,
                              Device device = Device::cpu(), Stream stream = {});

  /// Copies raw element bytes (host byte order) to a new tensor of `shape` and
  /// `dtype` on `device`; any dtype. Errors: Shape when `bytes.size()` is not
  /// `shape.numel() * dtype_size(dtype)`; Backend / OutOfMemory from the device.
  static Tensor from_host_bytes(std::span<const std::byte> bytes, Shape shape, DType dtype,
                                Device device = Device::cpu(), Stream stream = {});

  /// A new tensor whose contents are unspecified, allocated on `stream` (which
  /// must belong to `device`). O(1) besides the allocation. Error: OutOfMemory
  /// when the allocation fails or its byte count overflows size_t.
  static Tensor empty(Shape shape, DType dtype, Device device = Device::cpu(), Stream stream = {});

  /// Wraps caller-owned memory on `device` without copying (the way DLPack
  /// hands tensors over). `release` runs when the last handle goes away; it
  /// may be empty. The bytes are not counted by the backend. `stream` is the
  /// stream the data is produced on (copies out of the tensor wait for it).
  static Tensor wrap(void* data, Shape shape, DType dtype, Device device,
                     std::function<void()> release, Stream stream = {});

  bool defined() const noexcept { return storage_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  const std::vector<std::size_t>& dims() const noexcept { return shape_.dims(); }
  std::size_t rank() const noexcept { return shape_.rank(); }
  /// Size of axis `axis`. Error: Shape when `axis >= rank()`.
  std::size_t dim(std::size_t axis) const;
  std::size_t numel() const noexcept { return shape_.numel(); }
  std::size_t nbytes() const noexcept { return numel() * dtype_size(dtype_); }
  DType dtype() const noexcept { return dtype_; }
  Device device() const;
  /// The stream the storage was allocated on (or wrapped with).
  Stream stream() const;
  /// Byte offset of this tensor's first element inside its storage.
  std::size_t offset() const noexcept { return offset_; }

  /// Address of the first element (a device address for CUDA tensors).
  const void* data() const;
  void* mutable_data();

  /// View of index `index` along axis 0, sharing storage: shape drops axis 0.
  /// O(1), no copy. Errors: Shape for a rank-0 tensor; Hook when `index >= dim(0)`.
  Tensor select(std::size_t index) const;

  /// View of rows `[start, start + length)` along axis 0, sharing storage.
  /// Errors: Shape for rank 0; Hook when the range exceeds `dim(0)`.
  Tensor narrow(std::size_t start, std::size_t length) const;

  /// Same storage, new shape with the same element count. Error: Shape otherwise.
  Tensor reshape(Shape shape) const;

  /// Copies to the host and converts every element to f32 (I32 and U8 convert
  /// by value). One device-to-host copy of `nbytes()`.
  std::vector<float> to_host_f32() const;

  /// Copies an I32 tensor to the host. Error: Config for any other dtype.
  std::vector<std::int32_t> to_host_i32() const;
  /// Copies an I64 tensor to the host. Error: Config for any other dtype.
  std::vector<std::int64_t> to_host_i64() const;

  /// Copies the raw element bytes to the host (`nbytes()` bytes); any dtype.
  std::vector<std::byte> to_host_bytes() const;

  /// Copies to `device` (a new tensor even when the device is the same),
  /// allocated on `stream` of `device`; a copy to the host runs on this
  /// tensor's stream and waits for it, any other on `stream`.
  Tensor to(Device device, Stream stream = {}) const;

  /// Converts to `dtype` on this tensor's device and stream (new storage; a
  /// copy when the dtype is the same). Float types only; Error: Config otherwise.
  Tensor to_dtype(DType dtype) const;

  /// True when both handles point into the same storage.
  bool shares_storage_with(const Tensor& other) const noexcept {
    return storage_ != nullptr && storage_ == other.storage_;
  }

 private:
  Tensor(std::shared_ptr<detail::Storage> storage, Shape shape, DType dtype, std::size_t offset)
      : storage_(std::move(storage)), shape_(std::move(shape)), dtype_(dtype), offset_(offset) {}
  void require_defined() const;
  void copy_to_host(void* dst) const;  // nbytes() bytes, any device
  // The elements of an integer tensor of `dtype` (sizeof(T) bytes each); Config for any other dtype.
  template <class T>
  std::vector<T> integers_to_host(DType dtype) const;

  std::shared_ptr<detail::Storage> storage_;
  Shape shape_;
  DType dtype_ = DType::F32;
  std::size_t offset_ = 0;
};

}  // namespace micache
