// AttentionCache and its top-k result.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <filesystem>

#include "bindings.hpp"
#include "micache/attention_cache.hpp"

namespace micache::python {
namespace {

using Heads = std::optional<std::vector<std::size_t>>;
using Path = std::filesystem::path;

// The keyword arguments every query takes after its positional ones.
#define MICACHE_SELECTION_ARGS nb::kw_only(), nb::arg("batch") = 0, nb::arg("heads") = nb::none()

std::string attention_repr(const AttentionCache& cache) {
  if (cache.is_empty()) {
    return "micache.AttentionCache(n_layers=0)";
  }
  return fmt::format("micache.AttentionCache(n_layers={}, {})", cache.n_layers(), describe(cache.patterns().front()));
}

}  // namespace

void bind_attention(nb::module_& m) {
  nb::class_<TopK>(m, "TopK", MICACHE_DOC_TYPE(TopK))
      .def_ro("indices", &TopK::indices, "I32 `[rows, k]` key indices.")
      .def_ro("weights", &TopK::weights, "F32 `[rows, k]` head-mean weights.")
      .def("__iter__",
           [](const TopK& top) { return nb::iter(nb::make_tuple(top.indices, top.weights)); },
           "Unpacks as `indices, weights = cache.top_attended_all(layer, k)`.")
      .def("__repr__", [](const TopK& top) {
        return fmt::format("micache.TopK(indices=[{}], weights=[{}])", describe(top.indices), describe(top.weights));
      });

  nb::class_<AttentionCache>(m, "AttentionCache", MICACHE_DOC_TYPE(AttentionCache))
      .def(nb::init<Stream>(), nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(AttentionCache))
      .def_static("with_capacity", &AttentionCache::with_capacity, nb::arg("n_layers"), nb::arg("stream") = Stream{},
                  MICACHE_DOC(AttentionCache, with_capacity))
      .def(
          "push", [](AttentionCache& cache, const TensorArg& pattern) { cache.push(pattern.get(cache.stream())); },
          nb::arg("pattern"), MICACHE_DOC(AttentionCache, push))
      .def_prop_ro("n_layers", &AttentionCache::n_layers)
      .def_prop_ro("is_empty", &AttentionCache::is_empty)
      .def_prop_ro("stream", &AttentionCache::stream, MICACHE_DOC(AttentionCache, stream))
      .def("__len__", &AttentionCache::n_layers, "The number of layers held.")
      .def(
          "get_layer",
          [](const AttentionCache& cache, std::size_t layer) {
            const Tensor* pattern = cache.get_layer(layer);
            return pattern == nullptr ? nb::none() : to_python(*pattern);
          },
          nb::arg("layer"), nb::sig("def get_layer(self, layer: int) -> Tensor | None"),
          MICACHE_DOC(AttentionCache, get_layer))
      .def_prop_ro("patterns", &AttentionCache::patterns, MICACHE_DOC(AttentionCache, patterns))
      .def(
          "save", [](const AttentionCache& cache, const Path& path) { cache.save(path.string()); }, nb::arg("path"),
          MICACHE_DOC(AttentionCache, save))
      .def_static(
          "load",
          [](const Path& path, Device device, Stream stream) { return AttentionCache::load(path.string(), device, stream); },
          nb::arg("path"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
          nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(AttentionCache, load))
      .def(
          "attention_from_position",
          [](const AttentionCache& cache, std::size_t layer, std::size_t position, std::size_t batch, const Heads& heads) {
            return cache.attention_from_position(layer, position, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("position"), MICACHE_SELECTION_ARGS,
          MICACHE_DOC(AttentionCache, attention_from_position))
      .def(
          "attention_to_position",
          [](const AttentionCache& cache, std::size_t layer, std::size_t position, std::size_t batch, const Heads& heads) {
            return cache.attention_to_position(layer, position, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("position"), MICACHE_SELECTION_ARGS,
          MICACHE_DOC(AttentionCache, attention_to_position))
      .def(
          "top_attended_positions",
          [](const AttentionCache& cache, std::size_t layer, std::size_t from_position, std::size_t k, std::size_t batch,
             const Heads& heads) {
            return cache.top_attended_positions(layer, from_position, k, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("from_position"), nb::arg("k"), MICACHE_SELECTION_ARGS,
          MICACHE_DOC(AttentionCache, top_attended_positions))
      .def(
          "attention_from_position_tensor",
          [](const AttentionCache& cache, std::size_t layer, std::size_t position, std::size_t batch, const Heads& heads) {
            return cache.attention_from_position_tensor(layer, position, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("position"), MICACHE_SELECTION_ARGS,
          MICACHE_DOC(AttentionCache, attention_from_position_tensor))
      .def(
          "attention_to_position_tensor",
          [](const AttentionCache& cache, std::size_t layer, std::size_t position, std::size_t batch, const Heads& heads) {
            return cache.attention_to_position_tensor(layer, position, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("position"), MICACHE_SELECTION_ARGS,
          MICACHE_DOC(AttentionCache, attention_to_position_tensor))
      .def(
          "top_attended_tensor",
          [](const AttentionCache& cache, std::size_t layer, std::size_t from_position, std::size_t k, std::size_t batch,
             const Heads& heads) {
            return cache.top_attended_tensor(layer, from_position, k, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("from_position"), nb::arg("k"), MICACHE_SELECTION_ARGS,
          MICACHE_DOC(AttentionCache, top_attended_tensor))
      .def(
          "head_mean",
          [](const AttentionCache& cache, std::size_t layer, std::size_t batch, const Heads& heads) {
            return cache.head_mean(layer, head_selection(batch, heads));
          },
          nb::arg("layer"), MICACHE_SELECTION_ARGS, MICACHE_DOC(AttentionCache, head_mean))
      .def(
          "attention_received",
          [](const AttentionCache& cache, std::size_t layer, std::size_t batch, const Heads& heads) {
            return cache.attention_received(layer, head_selection(batch, heads));
          },
          nb::arg("layer"), MICACHE_SELECTION_ARGS, MICACHE_DOC(AttentionCache, attention_received))
      .def(
          "top_attended_all",
          [](const AttentionCache& cache, std::size_t layer, std::size_t k, std::size_t batch, const Heads& heads) {
            return cache.top_attended_all(layer, k, head_selection(batch, heads));
          },
          nb::arg("layer"), nb::arg("k"), MICACHE_SELECTION_ARGS, MICACHE_DOC(AttentionCache, top_attended_all))
      .def("__repr__", &attention_repr);
}

}  // namespace micache::python
