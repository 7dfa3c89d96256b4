// The bitpolar-style compressed caches: KvCacheConfig, CompressedHeads (the
// device-tensor store), KvHeadView, KvCacheCompressor, MultiHeadKvCache,
// GqaKvCache and SlidingWindowKvCache.
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <filesystem>

#include "bindings.hpp"
#include "micache/compressed_heads.hpp"
#include "micache/gqa_kv_cache.hpp"
#include "micache/kv_cache_compressor.hpp"
#include "micache/kv_cache_config.hpp"
#include "micache/multi_head_kv_cache.hpp"

namespace micache::python {
namespace {

using Path = std::filesystem::path;
using Vectors = std::vector<std::vector<float>>;

std::string config_repr(const KvCacheConfig& config) {
  return fmt::format("micache.KvCacheConfig(head_dim={}, bits={}, projections={}, seed={}, value_bits={}, "
                     "estimator=ScoreEstimator.{})",
                     config.head_dim, config.bits, config.projections, config.seed, config.value_bits,
                     config.estimator == ScoreEstimator::Mse ? "Mse" : "Qjl");
}

bool same_config(const KvCacheConfig& a, const KvCacheConfig& b) {
  return a.head_dim == b.head_dim && a.bits == b.bits && a.projections == b.projections && a.seed == b.seed &&
         a.value_bits == b.value_bits && a.estimator == b.estimator;
}

// "num_heads=8, len=3, head_dim=128, bits=4, device=cpu": what every compressed cache's repr shows.
std::string heads_repr(const CompressedHeads& heads, const char* heads_name) {
  return fmt::format("{}={}, len={}, head_dim={}, bits={}, device={}", heads_name, heads.num_heads(), heads.len(),
                     heads.config().head_dim, heads.config().bits, heads.device().to_string());
}

// Binds a cache class's save and (static) load.
template <class Cache, class Class>
void bind_files(Class& cls, const char* save_doc, const char* load_doc) {
  cls.def(
         "save", [](const Cache& cache, const Path& path) { cache.save(path.string()); }, nb::arg("path"), save_doc)
      .def_static(
          "load", [](const Path& path, Device device, Stream stream) { return Cache::load(path.string(), device, stream); },
          nb::arg("path"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
          nb::call_guard<nb::gil_scoped_release>(), load_doc);
}

void bind_config(nb::module_& m) {
  nb::enum_<ScoreEstimator>(m, "ScoreEstimator", MICACHE_DOC_TYPE(ScoreEstimator))
      .value("Mse", ScoreEstimator::Mse, MICACHE_DOC(ScoreEstimator, Mse))
      .value("Qjl", ScoreEstimator::Qjl, MICACHE_DOC(ScoreEstimator, Qjl));

  nb::enum_<FiniteCheck>(m, "FiniteCheck", MICACHE_DOC_TYPE(FiniteCheck))
      .value("Scan", FiniteCheck::Scan, MICACHE_DOC(FiniteCheck, Scan))
      .value("Skip", FiniteCheck::Skip, MICACHE_DOC(FiniteCheck, Skip));

  nb::class_<KvCacheConfig>(m, "KvCacheConfig", MICACHE_DOC_TYPE(KvCacheConfig))
      .def(
          "__init__",
          [](KvCacheConfig* self, std::size_t head_dim, unsigned bits, std::size_t projections, std::uint64_t seed,
             unsigned value_bits, ScoreEstimator estimator) {
            new (self) KvCacheConfig{.head_dim = head_dim,
                                     .bits = bits,
                                     .projections = projections,
                                     .seed = seed,
                                     .value_bits = value_bits,
                                     .estimator = estimator};
          },
          nb::kw_only(), nb::arg("head_dim") = 0, nb::arg("bits") = 4, nb::arg("projections") = 0,
          nb::arg("seed") = 0, nb::arg("value_bits") = 0, nb::arg("estimator") = ScoreEstimator::Mse,
          "Settings by keyword, C++'s defaults for those not given (validated when a cache is built).")
      .def_rw("head_dim", &KvCacheConfig::head_dim, MICACHE_DOC(KvCacheConfig, head_dim))
      .def_rw("bits", &KvCacheConfig::bits, MICACHE_DOC(KvCacheConfig, bits))
      .def_rw("projections", &KvCacheConfig::projections, MICACHE_DOC(KvCacheConfig, projections))
      .def_rw("seed", &KvCacheConfig::seed, MICACHE_DOC(KvCacheConfig, seed))
      .def_rw("value_bits", &KvCacheConfig::value_bits, MICACHE_DOC(KvCacheConfig, value_bits))
      .def_rw("estimator", &KvCacheConfig::estimator, MICACHE_DOC(KvCacheConfig, estimator))
      .def("validate", &KvCacheConfig::validate, MICACHE_DOC(KvCacheConfig, validate))
      .def("__eq__", &same_config, nb::is_operator())
      .def("__repr__", &config_repr);
}

void bind_heads(nb::module_& m) {
  nb::class_<CompressedHeads>(m, "CompressedHeads", MICACHE_DOC_TYPE(CompressedHeads))
      .def(nb::init<std::size_t, const KvCacheConfig&, Device, Stream>(), nb::arg("num_heads"), nb::arg("config"),
           nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(CompressedHeads))
      .def_prop_ro("num_heads", &CompressedHeads::num_heads)
      .def_prop_ro("config", &CompressedHeads::config)
      .def_prop_ro("device", &CompressedHeads::device)
      .def_prop_ro("stream", &CompressedHeads::stream, MICACHE_DOC(CompressedHeads, stream))
      .def("__len__", &CompressedHeads::len, MICACHE_DOC(CompressedHeads, len))
      .def_prop_ro("is_empty", &CompressedHeads::is_empty)
      .def(
          "push",
          [](CompressedHeads& heads, const TensorArg& keys, const TensorArg& values, FiniteCheck check) {
            heads.push(keys.get(heads.stream()), values.get(heads.stream()), check);
          },
          nb::arg("keys"), nb::arg("values"), nb::arg("check") = FiniteCheck::Scan, MICACHE_DOC(CompressedHeads, push))
      .def("reserve", &CompressedHeads::reserve, nb::arg("tokens"), MICACHE_DOC(CompressedHeads, reserve))
      .def(
          "scores",
          [](const CompressedHeads& heads, const TensorArg& queries, std::size_t group_size, FiniteCheck check) {
            return heads.scores(queries.get(heads.stream()), group_size, check);
          },
          nb::arg("queries"), nb::arg("group_size") = 1, nb::arg("check") = FiniteCheck::Scan,
          MICACHE_DOC(CompressedHeads, scores))
      .def(
          "attention_output",
          [](const CompressedHeads& heads, const TensorArg& queries, std::size_t group_size, FiniteCheck check) {
            return heads.attention_output(queries.get(heads.stream()), group_size, check);
          },
          nb::arg("queries"), nb::arg("group_size") = 1, nb::arg("check") = FiniteCheck::Scan,
          MICACHE_DOC(CompressedHeads, attention_output))
      .def(
          "head_scores",
          [](const CompressedHeads& heads, std::size_t head, const TensorArg& query, FiniteCheck check) {
            return heads.head_scores(head, query.get(heads.stream()), check);
          },
          nb::arg("head"), nb::arg("query"), nb::arg("check") = FiniteCheck::Scan,
          MICACHE_DOC(CompressedHeads, head_scores))
      .def(
          "decode_keys",
          [](const CompressedHeads& heads, std::optional<std::size_t> head) {
            return head ? heads.decode_keys(*head) : heads.decode_keys();
          },
          nb::arg("head") = nb::none(), MICACHE_DOC(CompressedHeads, decode_keys))
      .def(
          "decode_values",
          [](const CompressedHeads& heads, std::optional<std::size_t> head) {
            return head ? heads.decode_values(*head) : heads.decode_values();
          },
          nb::arg("head") = nb::none(), MICACHE_DOC(CompressedHeads, decode_values))
      .def("records", &CompressedHeads::records, MICACHE_DOC(CompressedHeads, records))
      .def(
          "assign_records",
          [](CompressedHeads& heads, const TensorArg& key_records, const TensorArg& value_records) {
            heads.assign_records(key_records.get(heads.stream()), value_records.get(heads.stream()));
          },
          nb::arg("key_records"), nb::arg("value_records"), MICACHE_DOC(CompressedHeads, assign_records))
      .def("keep_last", &CompressedHeads::keep_last, nb::arg("window"), MICACHE_DOC(CompressedHeads, keep_last))
      .def("clear", &CompressedHeads::clear, MICACHE_DOC(CompressedHeads, clear))
      .def_prop_ro("key_record_bytes", &CompressedHeads::key_record_bytes)
      .def_prop_ro("value_record_bytes", &CompressedHeads::value_record_bytes)
      .def_prop_ro("memory_usage", &CompressedHeads::memory_usage, MICACHE_DOC(CompressedHeads, memory_usage))
      .def_prop_ro("memory_reserved", &CompressedHeads::memory_reserved, MICACHE_DOC(CompressedHeads, memory_reserved))
      .def_prop_ro("table_bytes", &CompressedHeads::table_bytes, MICACHE_DOC(CompressedHeads, table_bytes))
      .def_prop_ro("compression_ratio", &CompressedHeads::compression_ratio,
                   MICACHE_DOC(CompressedHeads, compression_ratio))
      .def("__repr__", [](const CompressedHeads& heads) {
        return fmt::format("micache.CompressedHeads({})", heads_repr(heads, "num_heads"));
      });

  nb::class_<KvHeadView>(m, "KvHeadView", MICACHE_DOC_TYPE(KvHeadView))
      .def("__len__", &KvHeadView::len)
      .def_prop_ro("is_empty", &KvHeadView::is_empty)
      .def("attention_scores", &KvHeadView::attention_scores, nb::arg("query"), MICACHE_DOC(KvHeadView, attention_scores))
      .def("decode_keys", &KvHeadView::decode_keys, MICACHE_DOC(KvHeadView, decode_keys))
      .def("decode_values", &KvHeadView::decode_values, MICACHE_DOC(KvHeadView, decode_values))
      .def_prop_ro("compression_ratio", &KvHeadView::compression_ratio, MICACHE_DOC(KvHeadView, compression_ratio))
      .def("__repr__", [](const KvHeadView& view) { return fmt::format("micache.KvHeadView(len={})", view.len()); });
}

void bind_caches(nb::module_& m) {
  nb::class_<CompressedCacheBase>(m, "CompressedCacheBase", MICACHE_DOC_TYPE(CompressedCacheBase))
      .def("__len__", &CompressedCacheBase::len, MICACHE_DOC(CompressedCacheBase, len))
      .def_prop_ro("is_empty", &CompressedCacheBase::is_empty)
      .def_prop_ro("compression_ratio", &CompressedCacheBase::compression_ratio,
                   MICACHE_DOC(CompressedCacheBase, compression_ratio))
      .def("clear", &CompressedCacheBase::clear)
      .def_prop_ro(
          "heads", [](CompressedCacheBase& cache) -> CompressedHeads& { return cache.heads(); },
          nb::rv_policy::reference_internal, MICACHE_DOC(CompressedCacheBase, heads));

  auto compressor =
      nb::class_<KvCacheCompressor, CompressedCacheBase>(m, "KvCacheCompressor", MICACHE_DOC_TYPE(KvCacheCompressor))
          .def(nb::init<const KvCacheConfig&, Device, Stream>(), nb::arg("config"), nb::arg("device") = Device::cpu(),
               nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(KvCacheCompressor))
          .def("push", &KvCacheCompressor::push, nb::arg("key"), nb::arg("value"), MICACHE_DOC(KvCacheCompressor, push))
          .def("attention_scores", &KvCacheCompressor::attention_scores, nb::arg("query"),
               MICACHE_DOC(KvCacheCompressor, attention_scores))
          .def("attention_output", &KvCacheCompressor::attention_output, nb::arg("query"),
               MICACHE_DOC(KvCacheCompressor, attention_output))
          .def("decode_keys", &KvCacheCompressor::decode_keys, MICACHE_DOC(KvHeadView, decode_keys))
          .def("decode_values", &KvCacheCompressor::decode_values, MICACHE_DOC(KvHeadView, decode_values))
          .def("evict_outside_window", &KvCacheCompressor::evict_outside_window, nb::arg("window"),
               MICACHE_DOC(KvCacheCompressor, evict_outside_window))
          .def("__repr__", [](const KvCacheCompressor& cache) {
            return fmt::format("micache.KvCacheCompressor({})", heads_repr(cache.heads(), "num_heads"));
          });
  bind_files<KvCacheCompressor>(compressor, MICACHE_DOC(KvCacheCompressor, save), MICACHE_DOC(KvCacheCompressor, load));

  auto multi =
      nb::class_<MultiHeadKvCache, CompressedCacheBase>(m, "MultiHeadKvCache", MICACHE_DOC_TYPE(MultiHeadKvCache))
          .def(nb::init<std::size_t, const KvCacheConfig&, Device, Stream>(), nb::arg("num_heads"), nb::arg("config"),
               nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(MultiHeadKvCache))
          .def("push_token", &MultiHeadKvCache::push_token, nb::arg("keys"), nb::arg("values"),
               MICACHE_DOC(MultiHeadKvCache, push_token))
          .def("attention_scores", &MultiHeadKvCache::attention_scores, nb::arg("queries"),
               MICACHE_DOC(MultiHeadKvCache, attention_scores))
          .def("attention_output", &MultiHeadKvCache::attention_output, nb::arg("queries"),
               MICACHE_DOC(MultiHeadKvCache, attention_output))
          .def_prop_ro("num_heads", &MultiHeadKvCache::num_heads)
          .def("head", &MultiHeadKvCache::head, nb::arg("index"), nb::keep_alive<0, 1>(),
               MICACHE_DOC(MultiHeadKvCache, head))
          .def("__repr__", [](const MultiHeadKvCache& cache) {
            return fmt::format("micache.MultiHeadKvCache({})", heads_repr(cache.heads(), "num_heads"));
          });
  bind_files<MultiHeadKvCache>(multi, MICACHE_DOC(MultiHeadKvCache, save), MICACHE_DOC(MultiHeadKvCache, load));

  auto gqa =
      nb::class_<GqaKvCache, CompressedCacheBase>(m, "GqaKvCache", MICACHE_DOC_TYPE(GqaKvCache))
          .def(nb::init<std::size_t, std::size_t, const KvCacheConfig&, Device, Stream>(), nb::arg("num_kv_heads"),
               nb::arg("num_query_heads"), nb::arg("config"), nb::arg("device") = Device::cpu(),
               nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(GqaKvCache))
          .def_static("llama3_8b", &GqaKvCache::llama3_8b, nb::arg("config"), nb::arg("device") = Device::cpu(),
                      nb::arg("stream") = Stream{}, MICACHE_DOC(GqaKvCache, llama3_8b))
          .def_static("llama3_70b", &GqaKvCache::llama3_70b, nb::arg("config"), nb::arg("device") = Device::cpu(),
                      nb::arg("stream") = Stream{}, "Llama 3 70B's grouping: 8 kv heads, 64 query heads.")
          .def("push_token", &GqaKvCache::push_token, nb::arg("keys"), nb::arg("values"),
               MICACHE_DOC(GqaKvCache, push_token))
          .def("attention_scores", &GqaKvCache::attention_scores, nb::arg("queries"),
               MICACHE_DOC(GqaKvCache, attention_scores))
          .def("attention_output", &GqaKvCache::attention_output, nb::arg("queries"),
               MICACHE_DOC(GqaKvCache, attention_output))
          .def_prop_ro("num_kv_heads", &GqaKvCache::num_kv_heads)
          .def_prop_ro("num_query_heads", &GqaKvCache::num_query_heads)
          .def_prop_ro("group_size", &GqaKvCache::group_size)
          .def("kv_head", &GqaKvCache::kv_head, nb::arg("index"), nb::keep_alive<0, 1>(),
               "KV head `index`, or None when out of range.")
          .def("__repr__", [](const GqaKvCache& cache) {
            return fmt::format("micache.GqaKvCache({}, num_query_heads={})", heads_repr(cache.heads(), "num_kv_heads"),
                               cache.num_query_heads());
          });
  bind_files<GqaKvCache>(gqa, MICACHE_DOC(GqaKvCache, save), MICACHE_DOC(GqaKvCache, load));

  // The GqaKvCache is a private base in C++ (only push_token may change it),
  // so Python reads it through the accessors below rather than `cache()`.
  auto window =
      nb::class_<SlidingWindowKvCache>(m, "SlidingWindowKvCache", MICACHE_DOC_TYPE(SlidingWindowKvCache))
          .def(nb::init<std::size_t, std::size_t, std::size_t, const KvCacheConfig&, Device, Stream>(),
               nb::arg("num_kv_heads"), nb::arg("num_query_heads"), nb::arg("window_size"), nb::arg("config"),
               nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(SlidingWindowKvCache))
          .def("push_token", &SlidingWindowKvCache::push_token, nb::arg("keys"), nb::arg("values"),
               MICACHE_DOC(SlidingWindowKvCache, push_token))
          .def(
              "attention_scores",
              [](const SlidingWindowKvCache& cache, const Vectors& queries) { return cache.attention_scores(queries); },
              nb::arg("queries"), "As GqaKvCache.attention_scores, over the tokens in the window.")
          .def(
              "attention_output",
              [](const SlidingWindowKvCache& cache, const Vectors& queries) { return cache.attention_output(queries); },
              nb::arg("queries"), "As GqaKvCache.attention_output, over the tokens in the window.")
          .def("__len__", &SlidingWindowKvCache::window_len, MICACHE_DOC(SlidingWindowKvCache, window_len))
          .def_prop_ro("window_len", &SlidingWindowKvCache::window_len, MICACHE_DOC(SlidingWindowKvCache, window_len))
          .def_prop_ro("total_tokens_seen", &SlidingWindowKvCache::total_tokens_seen,
                       MICACHE_DOC(SlidingWindowKvCache, total_tokens_seen))
          .def_prop_ro("window_size", &SlidingWindowKvCache::window_size)
          .def_prop_ro("is_empty", [](const SlidingWindowKvCache& cache) { return cache.is_empty(); })
          .def_prop_ro("num_kv_heads", [](const SlidingWindowKvCache& cache) { return cache.cache().num_kv_heads(); })
          .def_prop_ro("num_query_heads",
                       [](const SlidingWindowKvCache& cache) { return cache.cache().num_query_heads(); })
          .def_prop_ro("group_size", [](const SlidingWindowKvCache& cache) { return cache.cache().group_size(); })
          .def_prop_ro(
              "compression_ratio", [](const SlidingWindowKvCache& cache) { return cache.cache().compression_ratio(); },
              MICACHE_DOC(CompressedCacheBase, compression_ratio))
          .def("clear", &SlidingWindowKvCache::clear, MICACHE_DOC(SlidingWindowKvCache, clear))
          .def(
              "restore",
              [](SlidingWindowKvCache& cache, const TensorArg& key_records, const TensorArg& value_records,
                 std::size_t total_tokens_seen) {
                cache.restore(key_records.get(cache.cache().heads().stream()),
                              value_records.get(cache.cache().heads().stream()), total_tokens_seen);
              },
              nb::arg("key_records"), nb::arg("value_records"), nb::arg("total_tokens_seen"),
              MICACHE_DOC(SlidingWindowKvCache, restore))
          .def("__repr__", [](const SlidingWindowKvCache& cache) {
            return fmt::format("micache.SlidingWindowKvCache({}, num_query_heads={}, window_size={}, "
                               "total_tokens_seen={})",
                               heads_repr(cache.cache().heads(), "num_kv_heads"), cache.cache().num_query_heads(),
                               cache.window_size(), cache.total_tokens_seen());
          });
  bind_files<SlidingWindowKvCache>(window, MICACHE_DOC(SlidingWindowKvCache, save),
                                   MICACHE_DOC(SlidingWindowKvCache, load));
}

}  // namespace

void bind_compressed(nb::module_& m) {
  bind_config(m);
  bind_heads(m);
  bind_caches(m);
}

}  // namespace micache::python
