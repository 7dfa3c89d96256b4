// KVCache and its eviction policy for byte budgets.
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <filesystem>
#include <optional>

#include "bindings.hpp"
#include "micache/kv_cache.hpp"

namespace micache::python {
namespace {

using Path = std::filesystem::path;

std::string kv_repr(const KVCache& cache) {
  return fmt::format("micache.KVCache(n_layers={}, seq_len={}, capacity={}, memory_usage={})", cache.n_layers(),
                     cache.seq_len(), cache.capacity(), cache.memory_usage());
}

}  // namespace

void bind_kv_cache(nb::module_& m) {
  nb::enum_<EvictionPolicy>(m, "EvictionPolicy", MICACHE_DOC_TYPE(EvictionPolicy))
      .value("ThreeQuarters", EvictionPolicy::ThreeQuarters, MICACHE_DOC(EvictionPolicy, ThreeQuarters))
      .value("UntilUnderBudget", EvictionPolicy::UntilUnderBudget, MICACHE_DOC(EvictionPolicy, UntilUnderBudget));

  nb::class_<KVCache>(m, "KVCache", MICACHE_DOC_TYPE(KVCache))
      .def(nb::init<std::size_t, Stream>(), nb::arg("n_layers") = 0, nb::arg("stream") = Stream{},
           MICACHE_DOC_INIT(KVCache))
      .def_static("new_cache", &KVCache::new_cache, nb::arg("n_layers"), "`n_layers` empty layers (candle-mi's name).")
      .def_prop_ro("n_layers", &KVCache::n_layers)
      .def_prop_ro("stream", &KVCache::stream, MICACHE_DOC(KVCache, stream))
      .def("__len__", &KVCache::n_layers, "The number of layers.")
      .def(
          "seq_len",
          [](const KVCache& cache, std::optional<std::size_t> layer) {
            return layer ? cache.seq_len(*layer) : cache.seq_len();
          },
          nb::arg("layer") = nb::none(), MICACHE_DOC(KVCache, seq_len))
      .def_prop_ro("is_empty", &KVCache::is_empty, MICACHE_DOC(KVCache, is_empty))
      .def("clear", &KVCache::clear, MICACHE_DOC(KVCache, clear))
      .def(
          "set_layer",
          [](KVCache& cache, std::size_t layer, const TensorArg& keys, const TensorArg& values) {
            cache.set_layer(layer, keys.get(cache.stream()), values.get(cache.stream()));
          },
          nb::arg("layer"), nb::arg("keys"), nb::arg("values"), MICACHE_DOC(KVCache, set_layer))
      .def(
          "append",
          [](KVCache& cache, std::size_t layer, const TensorArg& new_keys, const TensorArg& new_values) {
            cache.append(layer, new_keys.get(cache.stream()), new_values.get(cache.stream()));
          },
          nb::arg("layer"), nb::arg("new_keys"), nb::arg("new_values"), MICACHE_DOC(KVCache, append))
      .def("reserve", &KVCache::reserve, nb::arg("tokens"), MICACHE_DOC(KVCache, reserve))
      .def(
          "keys", [](const KVCache& cache, std::size_t layer) { return to_python(cache.keys(layer)); },
          nb::arg("layer"), nb::sig("def keys(self, layer: int) -> Tensor | None"), MICACHE_DOC(KVCache, keys))
      .def(
          "values", [](const KVCache& cache, std::size_t layer) { return to_python(cache.values(layer)); },
          nb::arg("layer"), nb::sig("def values(self, layer: int) -> Tensor | None"), MICACHE_DOC(KVCache, values))
      .def_prop_ro("memory_usage", &KVCache::memory_usage, MICACHE_DOC(KVCache, memory_usage))
      .def_prop_ro("memory_reserved", &KVCache::memory_reserved, MICACHE_DOC(KVCache, memory_reserved))
      .def_prop_ro("capacity", &KVCache::capacity, MICACHE_DOC(KVCache, capacity))
      .def("trim_to", &KVCache::trim_to, nb::arg("max_seq_len"), MICACHE_DOC(KVCache, trim_to))
      .def("enforce_memory_limit", &KVCache::enforce_memory_limit, nb::arg("max_bytes"),
           nb::arg("policy") = EvictionPolicy::ThreeQuarters, MICACHE_DOC(KVCache, enforce_memory_limit))
      .def("evict_to_window", &KVCache::evict_to_window, nb::arg("sinks"), nb::arg("window"),
           MICACHE_DOC(KVCache, evict_to_window))
      .def(
          "evict_heavy_hitters",
          [](KVCache& cache, const TensorArg& scores, std::size_t heavy, std::size_t window) {
            return cache.evict_heavy_hitters(scores.get(cache.stream()), heavy, window);
          },
          nb::arg("scores"), nb::arg("heavy"), nb::arg("window"), MICACHE_DOC(KVCache, evict_heavy_hitters))
      .def("shrink_to_fit", &KVCache::shrink_to_fit, MICACHE_DOC(KVCache, shrink_to_fit))
      .def("first_position", &KVCache::first_position, nb::arg("layer"), MICACHE_DOC(KVCache, first_position))
      .def("positions", &KVCache::positions, nb::arg("layer"), MICACHE_DOC(KVCache, positions))
      .def("next_position", &KVCache::next_position, nb::arg("layer"), MICACHE_DOC(KVCache, next_position))
      .def("restore_positions", &KVCache::restore_positions, nb::arg("layer"), nb::arg("positions"),
           nb::arg("next_position"), MICACHE_DOC(KVCache, restore_positions))
      .def(
          "save", [](const KVCache& cache, const Path& path) { cache.save(path.string()); }, nb::arg("path"),
          MICACHE_DOC(KVCache, save))
      .def_static(
          "load", [](const Path& path, Device device, Stream stream) { return KVCache::load(path.string(), device, stream); },
          nb::arg("path"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
          nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(KVCache, load))
      .def("__repr__", &kv_repr);
}

}  // namespace micache::python
