// MlaKvCache (latent vectors), LinearState, ModelKvCache and the builders for known models.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <span>
#include <variant>

#include "bindings.hpp"
#include "micache/mla_kv_cache.hpp"
#include "micache/model_kv_cache.hpp"

// ModelKvCache holds move-only layers, but its implicit copy constructor is
// declared all the same; tell nanobind not to instantiate it.
template <>
struct nanobind::detail::is_copy_constructible<micache::ModelKvCache> : std::false_type {};

namespace micache::python {
namespace {

std::string mla_repr(const MlaKvCache& cache) {
  return fmt::format("micache.MlaKvCache(latent_dim={}, len={}, bits={}, device={})", cache.latent_dim(), cache.len(),
                     cache.config().bits, cache.device().to_string());
}

// Layer `index` as the Python object of its alternative, a view into `owner`.
nb::object layer_object(ModelKvCache& model, std::size_t index, nb::handle owner) {
  return std::visit(
      [&](auto& layer) { return nb::cast(&layer, nb::rv_policy::reference_internal, owner); },
      model.layer_mut(index));
}

}  // namespace

void bind_model(nb::module_& m) {
  nb::class_<MlaKvCache>(m, "MlaKvCache", MICACHE_DOC_TYPE(MlaKvCache))
      .def(nb::init<std::size_t, unsigned, std::size_t, std::uint64_t, Device, Stream>(), nb::arg("latent_dim"),
           nb::arg("bits"), nb::arg("projections"), nb::arg("seed"), nb::arg("device") = Device::cpu(),
           nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(MlaKvCache))
      .def_static("deepseek_v3", &MlaKvCache::deepseek_v3, nb::arg("bits"), nb::arg("projections"), nb::arg("seed"),
                  nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC(MlaKvCache, deepseek_v3))
      .def(
          "push_latent",
          [](MlaKvCache& cache, const std::vector<float>& latent) { cache.push_latent(std::span(latent)); },
          nb::arg("latent"), MICACHE_DOC(MlaKvCache, push_latent))
      .def("decode_latents", &MlaKvCache::decode_latents, MICACHE_DOC(MlaKvCache, decode_latents))
      .def("decode_latents_tensor", &MlaKvCache::decode_latents_tensor, MICACHE_DOC(MlaKvCache, decode_latents_tensor))
      .def("latent_codes", &MlaKvCache::latent_codes, MICACHE_DOC(MlaKvCache, latent_codes))
      .def("__len__", &MlaKvCache::len, MICACHE_DOC(MlaKvCache, len))
      .def_prop_ro("is_empty", &MlaKvCache::is_empty)
      .def_prop_ro("latent_dim", &MlaKvCache::latent_dim)
      .def_prop_ro("config", &MlaKvCache::config, MICACHE_DOC(MlaKvCache, config))
      .def_prop_ro("device", &MlaKvCache::device)
      .def_prop_ro("stream", &MlaKvCache::stream)
      .def_prop_ro("compression_ratio", &MlaKvCache::compression_ratio, MICACHE_DOC(MlaKvCache, compression_ratio))
      .def("clear", &MlaKvCache::clear, MICACHE_DOC(MlaKvCache, clear))
      .def_prop_ro("record_bytes", &MlaKvCache::record_bytes, MICACHE_DOC(MlaKvCache, record_bytes))
      .def_prop_ro("memory_usage", &MlaKvCache::memory_usage, MICACHE_DOC(MlaKvCache, memory_usage))
      .def_prop_ro("memory_reserved", &MlaKvCache::memory_reserved, MICACHE_DOC(MlaKvCache, memory_reserved))
      .def_prop_ro("table_bytes", &MlaKvCache::table_bytes, MICACHE_DOC(MlaKvCache, table_bytes))
      .def("__repr__", &mla_repr);

  nb::class_<LinearState>(m, "LinearState", MICACHE_DOC_TYPE(LinearState))
      .def(
          "__init__",
          [](LinearState* self, std::vector<float> state, std::size_t state_dim) {
            new (self) LinearState{.state = std::move(state), .state_dim = state_dim};
          },
          nb::arg("state") = std::vector<float>{}, nb::arg("state_dim") = 0, "A linear-attention layer's state.")
      .def_rw("state", &LinearState::state)
      .def_rw("state_dim", &LinearState::state_dim)
      .def("__repr__", [](const LinearState& state) {
        return fmt::format("micache.LinearState(len(state)={}, state_dim={})", state.state.size(), state.state_dim);
      });

  nb::enum_<LayerKind>(m, "LayerKind", MICACHE_DOC_TYPE(LayerKind))
      .value("Global", LayerKind::Global)
      .value("Window", LayerKind::Window)
      .value("Latent", LayerKind::Latent)
      .value("Linear", LayerKind::Linear);

  nb::class_<ModelKvCache>(m, "ModelKvCache", MICACHE_DOC_TYPE(ModelKvCache))
      .def_prop_ro("num_layers", &ModelKvCache::num_layers)
      .def("__len__", &ModelKvCache::num_layers, "The number of layers.")
      .def(
          "layer",
          [](nb::handle self, std::size_t index) { return layer_object(nb::cast<ModelKvCache&>(self), index, self); },
          nb::arg("index"),
          nb::sig("def layer(self, index: int) -> GqaKvCache | SlidingWindowKvCache | MlaKvCache | LinearState"),
          MICACHE_DOC(ModelKvCache, layer))
      .def(
          "__getitem__",
          [](nb::handle self, std::size_t index) { return layer_object(nb::cast<ModelKvCache&>(self), index, self); },
          nb::arg("index"),
          nb::sig("def __getitem__(self, index: int) -> GqaKvCache | SlidingWindowKvCache | MlaKvCache | LinearState"),
          "layer(index); HookError (an IndexError) past the last layer, so iteration stops there.")
      .def("kind", &ModelKvCache::kind, nb::arg("index"), MICACHE_DOC(ModelKvCache, kind))
      .def_prop_ro("total_compressed_bytes", &ModelKvCache::total_compressed_bytes,
                   MICACHE_DOC(ModelKvCache, total_compressed_bytes))
      .def("clear", &ModelKvCache::clear, MICACHE_DOC(ModelKvCache, clear))
      .def("__repr__", [](const ModelKvCache& model) {
        return fmt::format("micache.ModelKvCache(num_layers={}, total_compressed_bytes={})", model.num_layers(),
                           model.total_compressed_bytes());
      });

  m.def("llama3_8b_cache", &llama3_8b_cache, nb::arg("bits"), nb::arg("projections"), nb::arg("seed"),
        nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC_FN(llama3_8b_cache));
  m.def("llama3_70b_cache", &llama3_70b_cache, nb::arg("bits"), nb::arg("projections"), nb::arg("seed"),
        nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC_FN(llama3_70b_cache));
  m.def("gemma3_cache", &gemma3_cache, nb::arg("num_layers"), nb::arg("num_kv_heads"), nb::arg("num_query_heads"),
        nb::arg("head_dim"), nb::arg("bits"), nb::arg("projections"), nb::arg("seed"),
        nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC_FN(gemma3_cache));
  m.def("deepseek_v3_cache", &deepseek_v3_cache, nb::arg("num_layers"), nb::arg("bits"), nb::arg("projections"),
        nb::arg("seed"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
        MICACHE_DOC_FN(deepseek_v3_cache));
}

}  // namespace micache::python
