#include "micache/tensor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/core/checks.hpp"
#include "src/core/storage.hpp"

namespace micache {
namespace detail {

Storage::Storage(Backend& owner, std::size_t size, Stream on)
    : ptr(owner.allocate(size, on)), bytes(size), device(owner.device()), stream(on), backend(&owner) {}

Storage::~Storage() {
  if (backend != nullptr) {
    backend->deallocate(ptr, bytes, stream);
  } else if (release) {
    release();
  }
}

}  // namespace detail

namespace {

void store_from_f32(std::span<const float> values, DType dtype, void* dst) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, values.data(), values.size_bytes());
      return;
    case DType::F16: {
      auto* out = static_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < values.size(); ++i) out[i] = f32_to_f16(values[i]);
      return;
    }
    case DType::BF16: {
      auto* out = static_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < values.size(); ++i) out[i] = f32_to_bf16(values[i]);
      return;
    }
    case DType::I32:
    case DType::U8:
    case DType::I64:
      break;
  }
  detail::require_float_dtype(dtype, "from_host dtype");
}

// Fills a new tensor of `shape` on `device` and `stream` from host bytes produced by `fill`.
template <class Fill>
Tensor make_from_host(Shape shape, DType dtype, Device device, Stream stream, Fill fill) {
  Tensor tensor = Tensor::empty(std::move(shape), dtype, device, stream);
  if (tensor.nbytes() == 0) {
    return tensor;
  }
  if (device.is_cpu()) {
    fill(tensor.mutable_data());
  } else {
    std::vector<std::byte> staging(tensor.nbytes());
    fill(staging.data());
    backend_for(device).copy_host_to_device(tensor.mutable_data(), staging.data(), staging.size(), stream);
  }
  return tensor;
}

}  // namespace

Tensor Tensor::from_host(std::span<const float> values, Shape shape, DType dtype, Device device, Stream stream) {
  detail::require_float_dtype(dtype, "Tensor::from_host dtype");
  if (values.size() != shape.numel()) {
    throw Error(ErrorCode::Shape, fmt::format("from_host: {} values do not fill shape {} ({} elements)", values.size(),
                                              shape.to_string(), shape.numel()));
  }
  return make_from_host(std::move(shape), dtype, device, stream,
                        [&](void* dst) { store_from_f32(values, dtype, dst); });
}

namespace {

// A new integer tensor of `dtype` holding `values` (sizeof(T) == dtype_size(dtype)).
template <class T>
Tensor integers_from_host(std::span<const T> values, Shape shape, DType dtype, Device device, Stream stream) {
  if (values.size() != shape.numel()) {
    throw Error(ErrorCode::Shape, fmt::format("from_host_{}: {} values do not fill shape {} ({} elements)",
                                              dtype_name(dtype), values.size(), shape.to_string(), shape.numel()));
  }
  return make_from_host(std::move(shape), dtype, device, stream,
                        [&](void* dst) { std::memcpy(dst, values.data(), values.size_bytes()); });
}

}  // namespace

Tensor Tensor::from_host_i32(std::span<const std::int32_t> values, Shape shape, Device device, Stream stream) {
  return integers_from_host(values, std::move(shape), DType::I32, device, stream);
}

Tensor Tensor::from_host_i64(std::span<const std::int64_t> values, Shape shape, Device device, Stream stream) {
  return integers_from_host(values, std::move(shape), DType::I64, device, stream);
}

Tensor Tensor::from_host_bytes(std::span<const std::byte> bytes, Shape shape, DType dtype, Device device,
                               Stream stream) {
  if (bytes.size() != shape.numel() * dtype_size(dtype)) {
    throw Error(ErrorCode::Shape,
                fmt::format("from_host_bytes: {} bytes do not fill shape {} of {} ({} bytes)", bytes.size(),
                            shape.to_string(), dtype_name(dtype), shape.numel() * dtype_size(dtype)));
  }
  return make_from_host(std::move(shape), dtype, device, stream,
                        [&](void* dst) { std::memcpy(dst, bytes.data(), bytes.size()); });
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device, Stream stream) {
  Backend& backend = backend_for(device);
  const auto& dims = shape.dims();
  const bool zero = std::find(dims.begin(), dims.end(), std::size_t{0}) != dims.end();
  std::size_t bytes = zero ? 0 : dtype_size(dtype);
  for (const std::size_t d : dims) {
    if (d != 0 && bytes > std::numeric_limits<std::size_t>::max() / d) {
      throw Error(ErrorCode::OutOfMemory, fmt::format("a {} tensor of shape {} needs more bytes than size_t counts",
                                                      dtype_name(dtype), shape.to_string()));
    }
    bytes *= d;
  }
  return Tensor(std::make_shared<detail::Storage>(backend, bytes, stream), std::move(shape), dtype, 0);
}

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, Device device, std::function<void()> release, Stream stream) {
  if (data == nullptr && shape.numel() != 0) {
    throw Error(ErrorCode::Config, "Tensor::wrap: null data for a non-empty shape");
  }
  return Tensor(std::make_shared<detail::Storage>(data, device, std::move(release), stream), std::move(shape), dtype,
                0);
}

void Tensor::require_defined() const {
  if (!defined()) {
    throw Error(ErrorCode::Config, "operation on an undefined Tensor");
  }
}

std::size_t Tensor::dim(std::size_t axis) const {
  if (axis >= rank()) {
    throw Error(ErrorCode::Shape, fmt::format("dim {} out of range (rank={})", axis, rank()));
  }
  return shape_[axis];
}

Device Tensor::device() const {
  require_defined();
  return storage_->device;
}

Stream Tensor::stream() const {
  require_defined();
  return storage_->stream;
}

const void* Tensor::data() const {
  require_defined();
  return static_cast<const std::byte*>(storage_->ptr) + offset_;
}

void* Tensor::mutable_data() {
  require_defined();
  return static_cast<std::byte*>(storage_->ptr) + offset_;
}

Tensor Tensor::narrow(std::size_t start, std::size_t length) const {
  require_defined();
  if (rank() == 0) {
    throw Error(ErrorCode::Shape, "narrow of a rank-0 tensor");
  }
  if (start > shape_[0] || length > shape_[0] - start) {
    throw Error(ErrorCode::Hook, fmt::format("rows [{}, {}) out of range (dim0={})", start, start + length, shape_[0]));
  }
  std::vector<std::size_t> dims = shape_.dims();
  const std::size_t row_bytes = nbytes() / (dims[0] == 0 ? 1 : dims[0]);
  dims[0] = length;
  return Tensor(storage_, Shape(std::move(dims)), dtype_, offset_ + start * row_bytes);
}

Tensor Tensor::select(std::size_t index) const {
  require_defined();
  if (rank() == 0) {
    throw Error(ErrorCode::Shape, "select of a rank-0 tensor");
  }
  detail::require_index(index, shape_[0], "index", "dim0");
  const Tensor row = narrow(index, 1);
  std::vector<std::size_t> dims(shape_.dims().begin() + 1, shape_.dims().end());
  return Tensor(row.storage_, Shape(std::move(dims)), dtype_, row.offset_);
}

Tensor Tensor::reshape(Shape shape) const {
  require_defined();
  if (shape.numel() != numel()) {
    throw Error(ErrorCode::Shape,
                fmt::format("reshape {} to {} changes the element count", shape_.to_string(), shape.to_string()));
  }
  return Tensor(storage_, std::move(shape), dtype_, offset_);
}

std::vector<float> Tensor::to_host_f32() const {
  require_defined();
  std::vector<float> out(numel());
  if (out.empty()) return out;
  if (dtype_ == DType::F32) {
    copy_to_host(out.data());
    return out;
  }
  std::vector<std::byte> raw;
  const void* host = data();
  if (!storage_->device.is_cpu()) {
    raw = to_host_bytes();
    host = raw.data();
  }
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = load_as_f32(host, dtype_, i);
  }
  return out;
}

void Tensor::copy_to_host(void* dst) const {
  if (nbytes() == 0) return;
  if (storage_->device.is_cpu()) {
    std::memcpy(dst, data(), nbytes());
  } else {
    backend_for(storage_->device).copy_device_to_host(dst, data(), nbytes(), storage_->stream);
  }
}

template <class T>
std::vector<T> Tensor::integers_to_host(DType dtype) const {
  require_defined();
  if (dtype_ != dtype) {
    throw Error(ErrorCode::Config, fmt::format("to_host_{} of a {} tensor", dtype_name(dtype), dtype_name(dtype_)));
  }
  std::vector<T> out(numel());
  copy_to_host(out.data());
  return out;
}

std::vector<std::int32_t> Tensor::to_host_i32() const { return integers_to_host<std::int32_t>(DType::I32); }

std::vector<std::int64_t> Tensor::to_host_i64() const { return integers_to_host<std::int64_t>(DType::I64); }

std::vector<std::byte> Tensor::to_host_bytes() const {
  require_defined();
  std::vector<std::byte> out(nbytes());
  copy_to_host(out.data());
  return out;
}

Tensor Tensor::to(Device target, Stream stream) const {
  require_defined();
  Tensor out = Tensor::empty(shape_, dtype_, target, stream);
  if (nbytes() == 0) {
    return out;
  }
  const Device source = storage_->device;
  if (source.is_cpu() && target.is_cpu()) {
    std::memcpy(out.mutable_data(), data(), nbytes());
  } else if (source.is_cpu()) {
    backend_for(target).copy_host_to_device(out.mutable_data(), data(), nbytes(), stream);
  } else if (target.is_cpu()) {
    copy_to_host(out.mutable_data());
  } else if (source == target) {
    backend_for(source).copy_device_to_device(out.mutable_data(), data(), nbytes(), stream);
  } else {
    std::vector<std::byte> staging(nbytes());
    copy_to_host(staging.data());
    backend_for(target).copy_host_to_device(out.mutable_data(), staging.data(), nbytes(), stream);
  }
  return out;
}

Tensor Tensor::to_dtype(DType dtype) const {
  require_defined();
  detail::require_float_dtype(dtype_, "to_dtype source dtype");
  detail::require_float_dtype(dtype, "to_dtype target dtype");
  Tensor out = Tensor::empty(shape_, dtype, storage_->device, storage_->stream);
  backend_for(storage_->device).convert(data(), dtype_, out.mutable_data(), dtype, numel(), storage_->stream);
  return out;
}

}  // namespace micache
