// ActivationCache and FullActivationCache.
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <filesystem>

#include "bindings.hpp"
#include "micache/activation_cache.hpp"
#include "micache/full_activation_cache.hpp"

namespace micache::python {
namespace {

using Path = std::filesystem::path;

template <class Cache>
nb::object layer_or_none(const Cache& cache, std::size_t layer) {
  const Tensor* tensor = cache.get_layer(layer);
  return tensor == nullptr ? nb::none() : to_python(*tensor);
}

template <class Cache>
std::string layers_repr(const char* name, const Cache& cache) {
  const Tensor* first = cache.get_layer(0);
  if (first == nullptr) {
    return fmt::format("micache.{}(n_layers=0)", name);
  }
  return fmt::format("micache.{}(n_layers={}, {})", name, cache.n_layers(), describe(*first));
}

}  // namespace

void bind_activations(nb::module_& m) {
  nb::class_<ActivationCache>(m, "ActivationCache", MICACHE_DOC_TYPE(ActivationCache))
      .def(nb::init<>(), "An empty cache.")
      .def_static(
          "new_cache",
          [](const std::vector<TensorArg>& activations) {
            std::vector<Tensor> tensors;
            tensors.reserve(activations.size());
            for (const TensorArg& activation : activations) {
              tensors.push_back(activation.get(Stream{}));
            }
            return ActivationCache::new_cache(std::move(tensors));
          },
          nb::arg("activations"), MICACHE_DOC(ActivationCache, new_cache))
      .def_static("with_capacity", &ActivationCache::with_capacity, nb::arg("n_layers"),
                  MICACHE_DOC(ActivationCache, with_capacity))
      .def(
          "push", [](ActivationCache& cache, const TensorArg& tensor) { cache.push(tensor.get(Stream{})); },
          nb::arg("tensor"), MICACHE_DOC(ActivationCache, push))
      .def("get_layer", &layer_or_none<ActivationCache>, nb::arg("layer"),
           nb::sig("def get_layer(self, layer: int) -> Tensor | None"), MICACHE_DOC(ActivationCache, get_layer))
      .def_prop_ro("n_layers", &ActivationCache::n_layers)
      .def_prop_ro("is_empty", &ActivationCache::is_empty)
      .def("__len__", &ActivationCache::n_layers, "The number of layers held.")
      .def_prop_ro("activations", &ActivationCache::activations, "Every layer's tensor, layer order.")
      .def("to_f32_vecs", &ActivationCache::to_f32_vecs, MICACHE_DOC(ActivationCache, to_f32_vecs))
      .def(
          "save", [](const ActivationCache& cache, const Path& path) { cache.save(path.string()); }, nb::arg("path"),
          MICACHE_DOC(ActivationCache, save))
      .def_static(
          "load",
          [](const Path& path, Device device, Stream stream) { return ActivationCache::load(path.string(), device, stream); },
          nb::arg("path"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
          nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(ActivationCache, load))
      .def("__repr__", [](const ActivationCache& cache) { return layers_repr("ActivationCache", cache); });

  nb::class_<FullActivationCache>(m, "FullActivationCache", MICACHE_DOC_TYPE(FullActivationCache))
      .def(nb::init<Stream>(), nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(FullActivationCache))
      .def_static("with_capacity", &FullActivationCache::with_capacity, nb::arg("n_layers"),
                  nb::arg("stream") = Stream{}, MICACHE_DOC(FullActivationCache, with_capacity))
      .def(
          "push", [](FullActivationCache& cache, const TensorArg& tensor) { cache.push(tensor.get(cache.stream())); },
          nb::arg("tensor"), MICACHE_DOC(FullActivationCache, push))
      .def("get_layer", &layer_or_none<FullActivationCache>, nb::arg("layer"),
           nb::sig("def get_layer(self, layer: int) -> Tensor | None"), MICACHE_DOC(FullActivationCache, get_layer))
      .def("get_position", &FullActivationCache::get_position, nb::arg("layer"), nb::arg("position"),
           MICACHE_DOC(FullActivationCache, get_position))
      .def("stack_position", &FullActivationCache::stack_position, nb::arg("position"),
           MICACHE_DOC(FullActivationCache, stack_position))
      .def_prop_ro("n_layers", &FullActivationCache::n_layers)
      .def_prop_ro("seq_len", &FullActivationCache::seq_len, MICACHE_DOC(FullActivationCache, seq_len))
      .def_prop_ro("is_empty", &FullActivationCache::is_empty)
      .def_prop_ro("stream", &FullActivationCache::stream, MICACHE_DOC(FullActivationCache, stream))
      .def("__len__", &FullActivationCache::n_layers, "The number of layers held.")
      .def(
          "save", [](const FullActivationCache& cache, const Path& path) { cache.save(path.string()); },
          nb::arg("path"), MICACHE_DOC(FullActivationCache, save))
      .def_static(
          "load",
          [](const Path& path, Device device, Stream stream) {
            return FullActivationCache::load(path.string(), device, stream);
          },
          nb::arg("path"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
          nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(FullActivationCache, load))
      .def("__repr__", [](const FullActivationCache& cache) { return layers_repr("FullActivationCache", cache); });
}

}  // namespace micache::python
