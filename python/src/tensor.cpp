// micache.Tensor and the DLPack exchange: tensors in from any producer
// without a copy where micache can read them in place, and out to any
// consumer without a copy.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "micache/error.hpp"
#include "micache/registry.hpp"

namespace micache::python {
namespace {

namespace dl = nb::dlpack;

// DLPack's device types (dlpack.h DLDeviceType).
constexpr int kDlCpu = 1;
constexpr int kDlCuda = 2;
constexpr int kDlCudaHost = 3;     // pinned host memory: the CPU reads it in place
constexpr int kDlCudaManaged = 13;  // managed memory: the GPU reads it in place
// The stream values of the DLPack protocol for CUDA (array API, __dlpack__).
constexpr std::int64_t kLegacyDefaultStream = 1;
constexpr std::int64_t kNoSynchronisation = -1;

dl::dtype dlpack_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return nb::dtype<float>();
    case DType::F16: return {static_cast<std::uint8_t>(dl::dtype_code::Float), 16, 1};
    case DType::BF16: return {static_cast<std::uint8_t>(dl::dtype_code::Bfloat), 16, 1};
    case DType::I32: return nb::dtype<std::int32_t>();
    case DType::U8: return nb::dtype<std::uint8_t>();
    case DType::I64: return nb::dtype<std::int64_t>();
  }
  throw Error(ErrorCode::Config, "unknown dtype");
}

std::string dlpack_dtype_name(dl::dtype dtype) {
  const char* kind = "type";
  switch (static_cast<dl::dtype_code>(dtype.code)) {
    case dl::dtype_code::Int: kind = "int"; break;
    case dl::dtype_code::UInt: kind = "uint"; break;
    case dl::dtype_code::Float: kind = "float"; break;
    case dl::dtype_code::Bfloat: kind = "bfloat"; break;
    case dl::dtype_code::Complex: kind = "complex"; break;
    case dl::dtype_code::Bool: return "bool";
    default: break;
  }
  return fmt::format("{}{}", kind, dtype.bits);
}

// The micache dtype of a DLPack dtype, or nothing.
std::optional<DType> micache_dtype(dl::dtype dtype) {
  if (dtype.lanes != 1) {
    return std::nullopt;
  }
  switch (static_cast<dl::dtype_code>(dtype.code)) {
    case dl::dtype_code::Float:
      if (dtype.bits == 32) return DType::F32;
      if (dtype.bits == 16) return DType::F16;
      return std::nullopt;
    case dl::dtype_code::Bfloat: return dtype.bits == 16 ? std::optional(DType::BF16) : std::nullopt;
    case dl::dtype_code::Int:
      if (dtype.bits == 32) return DType::I32;
      if (dtype.bits == 64) return DType::I64;
      return std::nullopt;
    case dl::dtype_code::UInt: return dtype.bits == 8 ? std::optional(DType::U8) : std::nullopt;
    default: return std::nullopt;
  }
}

using Array = nb::ndarray<nb::ro>;

bool is_c_contiguous(const Array& array) {
  std::int64_t expected = 1;
  for (std::size_t axis = array.ndim(); axis-- > 0;) {
    if (array.shape(axis) != 1 && array.stride(axis) != expected) {
      return false;
    }
    expected *= static_cast<std::int64_t>(array.shape(axis));
  }
  return true;
}

Device micache_device(const Array& array) {
  switch (array.device_type()) {
    case kDlCpu:
    case kDlCudaHost: return Device::cpu();
    case kDlCuda:
    case kDlCudaManaged: return Device::cuda(array.device_id());
    default:
      throw Error(ErrorCode::Config,
                  fmt::format("tensor on DLPack device type {}: micache reads CPU and CUDA memory only",
                              array.device_type()));
  }
}

// `object` as an array micache reads in place: C-contiguous, in a dtype
// micache holds; the producer copies when it is not (float64 to float32).
Array importable(const nb::object& object) {
  Array array;
  if (!nb::try_cast(object, array, /*convert=*/false)) {
    if (nb::hasattr(object, "__dlpack__")) {
      object.attr("__dlpack__")();  // the producer's own error, where it has one (nanobind hides it)
    }
    throw nb::type_error("expected a micache.Tensor or an object with __dlpack__ or the buffer protocol");
  }
  const dl::dtype dtype = array.dtype();
  if (dtype == nb::dtype<double>()) {
    return Array(nb::cast<nb::ndarray<nb::ro, float, nb::c_contig>>(object, /*convert=*/true));
  }
  if (!micache_dtype(dtype)) {
    throw Error(ErrorCode::Config,
                fmt::format("tensor dtype {} is not one micache holds (float32, float16, bfloat16, int32, int64, "
                            "uint8; float64 is converted to float32)",
                            dlpack_dtype_name(dtype)));
  }
  if (!is_c_contiguous(array)) {
    return Array(nb::cast<nb::ndarray<nb::ro, nb::c_contig>>(object, /*convert=*/true));
  }
  return array;
}

// The tensor `array` views, keeping the array (and so its producer's memory)
// alive; a CUDA one is produced on `stream`, the one it was handed over for.
Tensor wrapped(const Array& array, Stream stream) {
  std::vector<std::size_t> dims(array.ndim());
  for (std::size_t axis = 0; axis < dims.size(); ++axis) {
    dims[axis] = array.shape(axis);
  }
  const DType dtype = *micache_dtype(array.dtype());
  const Device device = micache_device(array);
  // The array's last reference is dropped with the GIL held, from whichever
  // thread releases the storage (or never, once the interpreter is gone).
  std::shared_ptr<Array> held(new Array(array), [](Array* dropped) {
    if (nb::detail::cleanup_guard guard{}) {
      delete dropped;
    }
  });
  return Tensor::wrap(const_cast<void*>(array.data()), Shape(std::move(dims)), dtype, device,
                      [held]() mutable { held.reset(); }, device.is_cpu() ? Stream{} : stream);
}

// The same memory as a nanobind array (an object with __dlpack__) whose
// capsule owns a handle to `tensor`.
nb::ndarray<nb::array_api> exported(const Tensor& tensor) {
  const std::vector<std::size_t>& dims = tensor.dims();
  const Device device = tensor.device();
  auto held = std::make_unique<Tensor>(tensor);
  nb::capsule owner(held.get(), [](void* pointer) noexcept { delete static_cast<Tensor*>(pointer); });
  held.release();
  return nb::ndarray<nb::array_api>(const_cast<void*>(tensor.data()), dims.size(), dims.data(), owner, nullptr,
                       dlpack_dtype(tensor.dtype()), device.is_cpu() ? kDlCpu : kDlCuda, device.index);
}

// Makes `tensor` ready for work the consumer queues on its `stream` (the
// DLPack protocol's value): the consumer's stream waits for the tensor's
// own (an event, the host does not block) unless the consumer works on that
// same stream or asked for no synchronisation.
void ready_for_consumer(const Tensor& tensor, const nb::handle& stream) {
  if (tensor.device().is_cpu()) {
    if (!stream.is_none() && nb::cast<std::int64_t>(stream) != kNoSynchronisation) {
      throw nb::buffer_error("__dlpack__(): stream must be None for a tensor on the CPU");
    }
    return;
  }
  const std::int64_t value = stream.is_none() ? kLegacyDefaultStream : nb::cast<std::int64_t>(stream);
  if (value == kNoSynchronisation) {
    return;
  }
  void* const consumer = value == kLegacyDefaultStream ? nullptr : reinterpret_cast<void*>(value);
  backend_for(tensor.device()).wait_stream(Stream{consumer}, tensor.stream());
}

nb::object dlpack(const Tensor& tensor, const nb::handle& stream, const nb::handle& max_version,
                  const nb::handle& dl_device, const nb::handle& copy) {
  const Tensor source =
      !copy.is_none() && nb::cast<bool>(copy) ? tensor.to(tensor.device(), tensor.stream()) : tensor;
  ready_for_consumer(source, stream);
  nb::kwargs forwarded;
  if (!max_version.is_none()) {
    forwarded["max_version"] = max_version;
  }
  if (!dl_device.is_none()) {
    forwarded["dl_device"] = dl_device;
  }
  return nb::cast(exported(source)).attr("__dlpack__")(**forwarded);
}

nb::tuple dims_tuple(const Tensor& tensor) {
  nb::list dims;
  for (std::size_t dim : tensor.dims()) {
    dims.append(dim);
  }
  return nb::tuple(dims);
}

}  // namespace

// What `object` hands over for micache to read on `reader`: on a stream
// other than the default, a CUDA producer's capsule made for that stream
// (DLPack: the producer orders its queued work before the consumer's
// stream); otherwise the object itself, whose plain __dlpack__() orders for
// the default stream. A buffer (numpy) is host memory: no device to ask
// (which costs a torch tensor ~2 us).
nb::object handed_over(const nb::object& object, Stream reader) {
  if (reader.handle == nullptr || PyObject_CheckBuffer(object.ptr()) != 0 ||
      !nb::hasattr(object, "__dlpack_device__")) {
    return object;
  }
  const nb::tuple device = nb::cast<nb::tuple>(object.attr("__dlpack_device__")());
  if (nb::cast<int>(device[0]) != kDlCuda) {
    return object;
  }
  return object.attr("__dlpack__")(nb::arg("stream") = reinterpret_cast<std::intptr_t>(reader.handle));
}

Tensor TensorArg::get(Stream reader) const {
  if (nb::isinstance<Tensor>(object)) {
    return nb::cast<Tensor>(object);
  }
  return wrapped(importable(handed_over(object, reader)), reader);
}

nb::object to_python(const Tensor& tensor) { return tensor.defined() ? nb::cast(tensor) : nb::none(); }

std::string describe(const Tensor& tensor) {
  return fmt::format("shape={}, dtype={}, device={}", tensor.shape().to_string(), dtype_name(tensor.dtype()),
                     tensor.device().to_string());
}

HeadSelection head_selection(std::size_t batch, const std::optional<std::vector<std::size_t>>& heads) {
  return HeadSelection{.batch = batch, .heads = heads.value_or(std::vector<std::size_t>{})};
}

void bind_tensor(nb::module_& m) {
  nb::class_<Tensor>(m, "Tensor", MICACHE_DOC_TYPE(Tensor))
      .def(
          "__init__", [](Tensor* self, const TensorArg& data, Stream stream) { new (self) Tensor(data.get(stream)); },
          nb::arg("data"), nb::kw_only(), nb::arg("stream") = Stream{},
          "Wraps `data`, any DLPack producer (numpy, PyTorch, CuPy, JAX) or buffer, without a copy when micache\n"
          "can read it in place (C-contiguous, a dtype micache holds, CPU or CUDA memory); the tensor keeps\n"
          "`data` alive. Otherwise the producer copies first (float64 becomes float32). `stream` is the\n"
          "stream micache reads it on: for one other than the default, a CUDA producer is asked for\n"
          "`__dlpack__(stream=...)` of it, so that its queued writes come first (the default stream is\n"
          "what a plain `__dlpack__()` orders for); a CUDA tensor remembers it.")
      .def_static(
          "empty",
          [](const std::vector<std::size_t>& shape, DType dtype, Device device, Stream stream) {
            return Tensor::empty(Shape(shape), dtype, device, stream);
          },
          nb::arg("shape"), nb::arg("dtype") = DType::F32, nb::arg("device") = Device::cpu(),
          nb::arg("stream") = Stream{}, MICACHE_DOC(Tensor, empty))
      .def_prop_ro("shape", &dims_tuple, "Dimensions, outermost first.")
      .def_prop_ro("dtype", &Tensor::dtype)
      .def_prop_ro("device", &Tensor::device, "The device the storage lives on.")
      .def_prop_ro("stream", &Tensor::stream, MICACHE_DOC(Tensor, stream))
      .def_prop_ro("rank", &Tensor::rank)
      .def_prop_ro("numel", &Tensor::numel)
      .def_prop_ro("nbytes", &Tensor::nbytes, "numel × the dtype's size, in bytes.")
      .def_prop_ro("offset", &Tensor::offset, MICACHE_DOC(Tensor, offset))
      .def_prop_ro(
          "data_ptr", [](const Tensor& tensor) { return reinterpret_cast<std::uintptr_t>(tensor.data()); },
          MICACHE_DOC(Tensor, data))
      .def("__len__",
           [](const Tensor& tensor) {
             if (tensor.rank() == 0) {
               throw nb::type_error("len() of a rank-0 micache.Tensor");
             }
             return tensor.dim(0);
           })
      .def("__repr__", [](const Tensor& tensor) { return fmt::format("micache.Tensor({})", describe(tensor)); })
      .def("select", &Tensor::select, nb::arg("index"), MICACHE_DOC(Tensor, select))
      .def("narrow", &Tensor::narrow, nb::arg("start"), nb::arg("length"), MICACHE_DOC(Tensor, narrow))
      .def(
          "reshape", [](const Tensor& tensor, const std::vector<std::size_t>& shape) { return tensor.reshape(Shape(shape)); },
          nb::arg("shape"), MICACHE_DOC(Tensor, reshape))
      .def("to", &Tensor::to, nb::arg("device"), nb::arg("stream") = Stream{}, nb::call_guard<nb::gil_scoped_release>(),
           MICACHE_DOC(Tensor, to))
      .def("to_dtype", &Tensor::to_dtype, nb::arg("dtype"), nb::call_guard<nb::gil_scoped_release>(),
           MICACHE_DOC(Tensor, to_dtype))
      .def("shares_storage_with", &Tensor::shares_storage_with, nb::arg("other"),
           MICACHE_DOC(Tensor, shares_storage_with))
      .def("__dlpack__", &dlpack, nb::kw_only(), nb::arg("stream").none() = nb::none(),
           nb::arg("max_version").none() = nb::none(), nb::arg("dl_device").none() = nb::none(),
           nb::arg("copy").none() = nb::none(),
           nb::sig("def __dlpack__(self, *, stream: int | None = None, max_version: tuple[int, int] | None = None, "
                   "dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> typing_extensions.CapsuleType"),
           "The DLPack capsule of this tensor's memory (no copy unless `copy=True`). On CUDA, work the\n"
           "consumer queues on `stream` (1 or None: the legacy default stream; -1: no synchronisation)\n"
           "sees everything queued on the tensor's stream first: the consumer's stream waits on an event\n"
           "recorded on the tensor's, so the host does not block.")
      .def(
          "__dlpack_device__",
          [](const Tensor& tensor) {
            const Device device = tensor.device();
            return nb::make_tuple(device.is_cpu() ? kDlCpu : kDlCuda, device.index);
          },
          "(DLPack device type, device index): (1, 0) for the CPU, (2, i) for CUDA device i.");

  m.def(
      "from_dlpack", [](const TensorArg& data, Stream stream) { return data.get(stream); }, nb::arg("data"),
      nb::kw_only(), nb::arg("stream") = Stream{},
      "The micache.Tensor viewing `data` (see Tensor.__init__), read on `stream`: no copy where micache can\n"
      "read it in place.");
}

}  // namespace micache::python

namespace nanobind::detail {

bool type_caster<micache::python::TensorArg>::from_python(handle src, uint32_t, cleanup_list*) noexcept {
  const bool accepted = isinstance<micache::Tensor>(src) || hasattr(src, "__dlpack__") ||
                        PyObject_CheckBuffer(src.ptr()) != 0;
  if (accepted) {
    value.object = borrow(src);
  }
  return accepted;
}

}  // namespace nanobind::detail
