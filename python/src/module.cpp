// The extension module micache._micache; python/micache/__init__.py re-exports it.
#include "bindings.hpp"

NB_MODULE(_micache, m) {
  namespace py = micache::python;
  m.doc() = "micache's C++ caches, tensors, devices and streams (import them from `micache`).";
  py::bind_errors(m);
  py::bind_core(m);
  py::bind_tensor(m);
  py::bind_attention(m);
  py::bind_activations(m);
  py::bind_kv_cache(m);
  py::bind_compressed(m);
  py::bind_model(m);
  py::bind_paged(m);
}
