// What the binding translation units share: one registration function per
// cache family, tensors in and out through DLPack, and head selections.
#pragma once

#include <nanobind/nanobind.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "micache/head_selection.hpp"
#include "micache/tensor.hpp"
#include "micache_docstrings.hpp"

namespace micache::python {

namespace nb = nanobind;

/// A tensor argument as Python gives it: a micache.Tensor, or any object
/// with `__dlpack__` (numpy, PyTorch, CuPy, JAX) or the buffer protocol.
/// `get(reader)` turns it into a micache Tensor without a copy when micache
/// can read the memory in place (C-contiguous, a dtype micache holds, CPU or
/// CUDA memory); the Tensor keeps the Python object alive. Otherwise the
/// producer makes a C-contiguous copy first (float64 becomes float32).
/// `reader` is the stream micache reads the tensor on: on the default
/// stream the plain `__dlpack__()` already orders a CUDA producer's queued
/// writes first (DLPack's None is the legacy default stream); on another, a
/// CUDA producer is asked for `__dlpack__(stream=reader)` (which costs
/// asking any producer but a buffer for its device first).
/// Errors (get): Config for a dtype micache holds no form of, or memory on
/// a device other than the CPU or a CUDA GPU.
struct TensorArg {
  nb::object object;
  Tensor get(Stream reader) const;
};

/// A micache Tensor as a Python object whose `__dlpack__` exports the same
/// memory; an undefined Tensor is None.
nb::object to_python(const Tensor& tensor);

/// The HeadSelection of a query's keyword arguments: `batch` and `heads`
/// (None: every head).
HeadSelection head_selection(std::size_t batch, const std::optional<std::vector<std::size_t>>& heads);

/// "shape=[1, 2, 4, 4], dtype=f32, device=cpu": how every repr names a tensor's geometry.
std::string describe(const Tensor& tensor);

void bind_errors(nb::module_& m);
void bind_core(nb::module_& m);
void bind_tensor(nb::module_& m);
void bind_attention(nb::module_& m);
void bind_activations(nb::module_& m);
void bind_kv_cache(nb::module_& m);
void bind_compressed(nb::module_& m);
void bind_model(nb::module_& m);
void bind_paged(nb::module_& m);

}  // namespace micache::python

namespace nanobind::detail {

/// Accepts micache.Tensor instances and every object that offers
/// `__dlpack__` or a buffer; the conversion itself is TensorArg::get().
template <>
struct type_caster<micache::python::TensorArg> {
  NB_TYPE_CASTER(micache::python::TensorArg, const_name("micache.TensorLike"))

  bool from_python(handle src, uint32_t, cleanup_list*) noexcept;
  static handle from_cpp(const micache::python::TensorArg& value, rv_policy, cleanup_list*) noexcept {
    return value.object.inc_ref();
  }
};

}  // namespace nanobind::detail
