// PagedKvCache, its config, step plans and counters. A SequenceId is a plain
// Python int; add_sequence() and add_sequence(prompt, salt) are overloads,
// as in C++ (the second returns the PrefixHit).
#include <nanobind/stl/array.h>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "micache/paged_kv_cache.hpp"

namespace nanobind::detail {

/// SequenceId as a Python int (its underlying uint64).
template <>
struct type_caster<micache::SequenceId> {
  NB_TYPE_CASTER(micache::SequenceId, const_name("int"))

  bool from_python(handle src, uint8_t flags, cleanup_list* cleanup) noexcept {
    make_caster<std::uint64_t> raw;
    if (!raw.from_python(src, flags, cleanup)) {
      return false;
    }
    value = static_cast<micache::SequenceId>(raw.value);
    return true;
  }
  static handle from_cpp(micache::SequenceId id, rv_policy, cleanup_list*) noexcept {
    return PyLong_FromUnsignedLongLong(static_cast<unsigned long long>(id));
  }
};

}  // namespace nanobind::detail

namespace micache::python {
namespace {

using Path = std::filesystem::path;

std::uint64_t id_value(SequenceId id) { return static_cast<std::uint64_t>(id); }

std::string kind_repr(const PagedLayerKind& kind) {
  if (kind.is_full()) {
    return "micache.PagedLayerKind.full()";
  }
  if (kind.sinks == 0) {
    return fmt::format("micache.PagedLayerKind.sliding({})", kind.window);
  }
  return fmt::format("micache.PagedLayerKind.sinks_and_window({}, {})", kind.sinks, kind.window);
}

std::string config_repr(const PagedKvConfig& config) {
  std::vector<std::string> kinds;
  for (const PagedLayerKind& kind : config.layer_kinds) {
    kinds.push_back(kind_repr(kind));
  }
  return fmt::format(
      "micache.PagedKvConfig(n_layers={}, kv_heads={}, head_dim={}, page_size={}, num_pages={}, max_bytes={}, "
      "dtype={}, layout={}, max_sequences={}, max_sequence_len={}, layer_kinds=[{}])",
      config.n_layers, config.kv_heads, config.head_dim, config.page_size, config.num_pages, config.max_bytes,
      dtype_name(config.dtype), config.layout == PagedLayout::Nhd ? "Nhd" : "Hnd", config.max_sequences,
      config.max_sequence_len, fmt::join(kinds, ", "));
}

std::string groups_repr(const PagedLayerGroups& g) {
  std::vector<std::string> kinds;
  for (const PagedLayerKind& kind : g.group_kinds) {
    kinds.push_back(kind_repr(kind));
  }
  return fmt::format("micache.PagedLayerGroups(group_size={}, layer_group={}, layer_slot={}, group_kinds=[{}])",
                     g.group_size, g.layer_group, g.layer_slot, fmt::join(kinds, ", "));
}

std::string sequence_state_repr(const PagedSequenceState& s) {
  return fmt::format("micache.PagedSequenceState(id={}, length={}, pages={}, row={})", s.id, s.length, s.pages,
                     s.row);
}

std::string state_repr(const PagedKvState& s) {
  return fmt::format(
      "micache.PagedKvState(sequences={}, pages={}, free_pages={}, cached_pages={}, names={}, next_id={}, step={})",
      s.sequences.size(), s.references.size(), s.free_pages.size(), s.cached_pages.size(), s.names.size(),
      s.next_id, s.step);
}

std::string plan_repr(const PagedStepPlan& plan) {
  return fmt::format("micache.PagedStepPlan(batch={}, total_new={}, total_pages={}, groups={})", plan.batch,
                     plan.total_new, plan.total_pages, plan.groups);
}

std::string pool_repr(const PagedPoolStats& s) {
  return fmt::format(
      "micache.PagedPoolStats(pages_total={}, pages_used={}, pages_cached={}, pages_free={}, pages_shared={}, "
      "tokens={}, bytes_total={}, bytes_used={}, bytes_cached={}, bytes_free={})",
      s.pages_total, s.pages_used, s.pages_cached, s.pages_free, s.pages_shared, s.tokens, s.bytes_total,
      s.bytes_used, s.bytes_cached, s.bytes_free);
}

std::string prefix_repr(const PrefixCacheStats& s) {
  return fmt::format(
      "micache.PrefixCacheStats(lookup_tokens={}, hit_tokens={}, hit_pages={}, evictions={}, named_pages={})",
      s.lookup_tokens, s.hit_tokens, s.hit_pages, s.evictions, s.named_pages);
}

std::string sequence_repr(const PagedSequenceStats& s) {
  return fmt::format("micache.PagedSequenceStats(tokens={}, pages={}, bytes={}, slack={})", s.tokens, s.pages,
                     s.bytes, s.slack);
}

std::string cache_repr(const PagedKvCache& cache) {
  const PagedPoolStats stats = cache.pool_stats();
  return fmt::format(
      "micache.PagedKvCache(n_layers={}, num_pages={}, page_size={}, num_sequences={}, pages_used={}, device={})",
      cache.config().n_layers, cache.num_pages(), cache.config().page_size, cache.num_sequences(), stats.pages_used,
      cache.device().to_string());
}

void bind_config(nb::module_& m) {
  nb::enum_<PagedLayout>(m, "PagedLayout", MICACHE_DOC_TYPE(PagedLayout))
      .value("Nhd", PagedLayout::Nhd, MICACHE_DOC(PagedLayout, Nhd))
      .value("Hnd", PagedLayout::Hnd, MICACHE_DOC(PagedLayout, Hnd));

  nb::class_<PagedLayerKind>(m, "PagedLayerKind", MICACHE_DOC_TYPE(PagedLayerKind))
      .def(
          "__init__",
          [](PagedLayerKind* self, std::size_t window, std::size_t sinks) {
            new (self) PagedLayerKind{.window = window, .sinks = sinks};
          },
          nb::kw_only(), nb::arg("window") = 0, nb::arg("sinks") = 0,
          "A kind by keyword: window 0 is full attention; sinks need a window (checked by PagedKvConfig.validate).")
      .def_static("full", &PagedLayerKind::full, "Full attention: every token.")
      .def_static("sliding", &PagedLayerKind::sliding, nb::arg("window"),
                  "A sliding window of the `window` most recent tokens, the query's own included.")
      .def_static("sinks_and_window", &PagedLayerKind::sinks_and_window, nb::arg("sinks"), nb::arg("window"),
                  "The first `sinks` tokens and a window of `window` (StreamingLLM).")
      .def_ro("window", &PagedLayerKind::window, MICACHE_DOC(PagedLayerKind, window))
      .def_ro("sinks", &PagedLayerKind::sinks, MICACHE_DOC(PagedLayerKind, sinks))
      .def_prop_ro("is_full", &PagedLayerKind::is_full, "Whether the kind is full attention (window 0).")
      .def(
          "__eq__", [](const PagedLayerKind& a, const PagedLayerKind& b) { return a == b; }, nb::is_operator())
      .def("__repr__", &kind_repr);

  nb::class_<PagedLayerGroups>(m, "PagedLayerGroups", MICACHE_DOC_TYPE(PagedLayerGroups))
      .def_ro("group_size", &PagedLayerGroups::group_size, MICACHE_DOC(PagedLayerGroups, group_size))
      .def_ro("layer_group", &PagedLayerGroups::layer_group, MICACHE_DOC(PagedLayerGroups, layer_group))
      .def_ro("layer_slot", &PagedLayerGroups::layer_slot, MICACHE_DOC(PagedLayerGroups, layer_slot))
      .def_ro("group_kinds", &PagedLayerGroups::group_kinds, MICACHE_DOC(PagedLayerGroups, group_kinds))
      .def_prop_ro("groups", &PagedLayerGroups::groups, "The number of layer groups.")
      .def_prop_ro("has_windows", &PagedLayerGroups::has_windows, MICACHE_DOC(PagedLayerGroups, has_windows))
      .def("__repr__", &groups_repr);

  nb::class_<PagedKvConfig>(m, "PagedKvConfig", MICACHE_DOC_TYPE(PagedKvConfig))
      .def(
          "__init__",
          [](PagedKvConfig* self, std::size_t n_layers, std::size_t kv_heads, std::size_t head_dim,
             std::size_t page_size, std::size_t num_pages, std::size_t max_bytes, DType dtype, PagedLayout layout,
             std::size_t max_sequences, std::size_t max_sequence_len, std::vector<PagedLayerKind> layer_kinds) {
            new (self) PagedKvConfig{.n_layers = n_layers,
                                     .kv_heads = kv_heads,
                                     .head_dim = head_dim,
                                     .page_size = page_size,
                                     .num_pages = num_pages,
                                     .max_bytes = max_bytes,
                                     .dtype = dtype,
                                     .layout = layout,
                                     .max_sequences = max_sequences,
                                     .max_sequence_len = max_sequence_len,
                                     .layer_kinds = std::move(layer_kinds)};
          },
          nb::kw_only(), nb::arg("n_layers") = 0, nb::arg("kv_heads") = 0, nb::arg("head_dim") = 0,
          nb::arg("page_size") = 16, nb::arg("num_pages") = 0, nb::arg("max_bytes") = 0,
          nb::arg("dtype") = DType::BF16, nb::arg("layout") = PagedLayout::Nhd, nb::arg("max_sequences") = 1024,
          nb::arg("max_sequence_len") = 0, nb::arg("layer_kinds") = std::vector<PagedLayerKind>{},
          "Settings by keyword, C++'s defaults for those not given (validated when a cache is built).")
      .def_rw("n_layers", &PagedKvConfig::n_layers)
      .def_rw("kv_heads", &PagedKvConfig::kv_heads)
      .def_rw("head_dim", &PagedKvConfig::head_dim)
      .def_rw("page_size", &PagedKvConfig::page_size, MICACHE_DOC(PagedKvConfig, page_size))
      .def_rw("num_pages", &PagedKvConfig::num_pages, MICACHE_DOC(PagedKvConfig, num_pages))
      .def_rw("max_bytes", &PagedKvConfig::max_bytes, MICACHE_DOC(PagedKvConfig, max_bytes))
      .def_rw("dtype", &PagedKvConfig::dtype, MICACHE_DOC(PagedKvConfig, dtype))
      .def_rw("layout", &PagedKvConfig::layout)
      .def_rw("max_sequences", &PagedKvConfig::max_sequences, MICACHE_DOC(PagedKvConfig, max_sequences))
      .def_rw("max_sequence_len", &PagedKvConfig::max_sequence_len, MICACHE_DOC(PagedKvConfig, max_sequence_len))
      .def_rw("layer_kinds", &PagedKvConfig::layer_kinds, MICACHE_DOC(PagedKvConfig, layer_kinds))
      .def("validate", &PagedKvConfig::validate, MICACHE_DOC(PagedKvConfig, validate))
      .def("layer_groups", &PagedKvConfig::layer_groups, MICACHE_DOC(PagedKvConfig, layer_groups))
      .def("kind_of", &PagedKvConfig::kind_of, nb::arg("layer"), MICACHE_DOC(PagedKvConfig, kind_of))
      .def("bytes_per_token", &PagedKvConfig::bytes_per_token, MICACHE_DOC(PagedKvConfig, bytes_per_token))
      .def("slot_bytes", &PagedKvConfig::slot_bytes, MICACHE_DOC(PagedKvConfig, slot_bytes))
      .def("page_bytes", &PagedKvConfig::page_bytes, MICACHE_DOC(PagedKvConfig, page_bytes))
      .def("storage_page_bytes", &PagedKvConfig::storage_page_bytes, MICACHE_DOC(PagedKvConfig, storage_page_bytes))
      .def("pages", &PagedKvConfig::pages, MICACHE_DOC(PagedKvConfig, pages))
      .def("pool_pages", &PagedKvConfig::pool_pages, MICACHE_DOC(PagedKvConfig, pool_pages))
      .def("reserved_bytes", &PagedKvConfig::reserved_bytes, MICACHE_DOC(PagedKvConfig, reserved_bytes))
      .def("sequence_len", &PagedKvConfig::sequence_len, MICACHE_DOC(PagedKvConfig, sequence_len))
      .def("row_capacity", &PagedKvConfig::row_capacity, MICACHE_DOC(PagedKvConfig, row_capacity))
      .def("table_bytes", &PagedKvConfig::table_bytes, MICACHE_DOC(PagedKvConfig, table_bytes))
      .def("__repr__", &config_repr);
}

void bind_results(nb::module_& m) {
  nb::class_<PagedStepPlan>(m, "PagedStepPlan", MICACHE_DOC_TYPE(PagedStepPlan))
      .def_ro("slot_mapping", &PagedStepPlan::slot_mapping,
              "I64 `[groups x total_new]`: each new token's slot, per group.")
      .def_ro("kv_indptr", &PagedStepPlan::kv_indptr, "I32 `[batch + 1]`: prefix sums of the sequences' page counts.")
      .def_ro("kv_indices", &PagedStepPlan::kv_indices,
              "I32 `[groups x total_pages]`: the sequences' page ids, per group.")
      .def_ro("kv_last_page_len", &PagedStepPlan::kv_last_page_len,
              "I32 `[batch]`: tokens in each sequence's last page.")
      .def_ro("qo_indptr", &PagedStepPlan::qo_indptr, "I32 `[batch + 1]`: prefix sums of the new token counts.")
      .def_ro("batch", &PagedStepPlan::batch, MICACHE_DOC(PagedStepPlan, batch))
      .def_ro("total_new", &PagedStepPlan::total_new, MICACHE_DOC(PagedStepPlan, total_new))
      .def_ro("total_pages", &PagedStepPlan::total_pages, MICACHE_DOC(PagedStepPlan, total_pages))
      .def_ro("groups", &PagedStepPlan::groups, MICACHE_DOC(PagedStepPlan, groups))
      .def("__repr__", &plan_repr);

  nb::class_<PrefixHit>(m, "PrefixHit", MICACHE_DOC_TYPE(PrefixHit))
      .def_ro("id", &PrefixHit::id, "The new sequence.")
      .def_ro("cached_tokens", &PrefixHit::cached_tokens, "Prompt tokens it already holds (a multiple of page_size).")
      .def("__repr__", [](const PrefixHit& hit) {
        return fmt::format("micache.PrefixHit(id={}, cached_tokens={})", id_value(hit.id), hit.cached_tokens);
      });

  nb::class_<PagedKv>(m, "PagedKv", MICACHE_DOC_TYPE(PagedKv))
      .def_ro("keys", &PagedKv::keys, "`[1, kv_heads, len, head_dim]`.")
      .def_ro("values", &PagedKv::values, "`[1, kv_heads, len, head_dim]`.")
      .def("__repr__", [](const PagedKv& kv) { return fmt::format("micache.PagedKv({})", describe(kv.keys)); });

  nb::class_<PagedDeviceAccounting>(m, "PagedDeviceAccounting", MICACHE_DOC_TYPE(PagedDeviceAccounting))
      .def_ro("per_sequence", &PagedDeviceAccounting::per_sequence,
              "I64 `[batch, 4]`: (tokens, pages, bytes, slack) per asked sequence.")
      .def_ro("pool", &PagedDeviceAccounting::pool, "I64 `[4]`: (pages used, pages shared, tokens, bytes used).")
      .def("__repr__", [](const PagedDeviceAccounting& accounting) {
        return fmt::format("micache.PagedDeviceAccounting(per_sequence={})", describe(accounting.per_sequence));
      });

  nb::class_<PagedPoolStats>(m, "PagedPoolStats", MICACHE_DOC_TYPE(PagedPoolStats))
      .def_ro("pages_total", &PagedPoolStats::pages_total, "Pages sequences can hold (the null page excluded).")
      .def_ro("pages_used", &PagedPoolStats::pages_used, "Pages held by one or more sequences.")
      .def_ro("pages_cached", &PagedPoolStats::pages_cached, "Pages held by none that keep a prefix's tokens.")
      .def_ro("pages_free", &PagedPoolStats::pages_free, "Pages on the free list.")
      .def_ro("pages_shared", &PagedPoolStats::pages_shared, "Used pages held by more than one sequence.")
      .def_ro("tokens", &PagedPoolStats::tokens, "Slots filled or reserved in used pages, each page's once.")
      .def_ro("bytes_total", &PagedPoolStats::bytes_total, MICACHE_DOC(PagedPoolStats, bytes_total))
      .def_ro("bytes_used", &PagedPoolStats::bytes_used, MICACHE_DOC(PagedPoolStats, bytes_used))
      .def_ro("bytes_cached", &PagedPoolStats::bytes_cached, MICACHE_DOC(PagedPoolStats, bytes_cached))
      .def_ro("bytes_free", &PagedPoolStats::bytes_free, MICACHE_DOC(PagedPoolStats, bytes_free))
      .def("__repr__", &pool_repr);

  nb::class_<PrefixCacheStats>(m, "PrefixCacheStats", MICACHE_DOC_TYPE(PrefixCacheStats))
      .def_ro("lookup_tokens", &PrefixCacheStats::lookup_tokens, MICACHE_DOC(PrefixCacheStats, lookup_tokens))
      .def_ro("hit_tokens", &PrefixCacheStats::hit_tokens, MICACHE_DOC(PrefixCacheStats, hit_tokens))
      .def_ro("hit_pages", &PrefixCacheStats::hit_pages, MICACHE_DOC(PrefixCacheStats, hit_pages))
      .def_ro("evictions", &PrefixCacheStats::evictions, MICACHE_DOC(PrefixCacheStats, evictions))
      .def_ro("named_pages", &PrefixCacheStats::named_pages, MICACHE_DOC(PrefixCacheStats, named_pages))
      .def("__repr__", &prefix_repr);

  nb::class_<PagedSequenceStats>(m, "PagedSequenceStats", MICACHE_DOC_TYPE(PagedSequenceStats))
      .def_ro("tokens", &PagedSequenceStats::tokens, "Tokens of the sequence.")
      .def_ro("pages", &PagedSequenceStats::pages, "Pages it holds over every layer group.")
      .def_ro("bytes", &PagedSequenceStats::bytes, "pages x page_bytes().")
      .def_ro("slack", &PagedSequenceStats::slack, "Empty slots of its pages.")
      .def("__repr__", &sequence_repr);
}

void bind_state(nb::module_& m) {
  nb::class_<PositionRuns::Run>(m, "PositionRun", "A run of consecutive original positions: begin, begin + 1, ...")
      .def(
          "__init__",
          [](PositionRuns::Run* self, std::size_t begin, std::size_t length) {
            new (self) PositionRuns::Run{.begin = begin, .length = length};
          },
          nb::arg("begin") = 0, nb::arg("length") = 0, "A run of `length` positions from `begin`.")
      .def_rw("begin", &PositionRuns::Run::begin, "Its first position.")
      .def_rw("length", &PositionRuns::Run::length, "Its number of positions.")
      .def(
          "__eq__", [](const PositionRuns::Run& a, const PositionRuns::Run& b) { return a == b; }, nb::is_operator())
      .def("__repr__", [](const PositionRuns::Run& run) {
        return fmt::format("micache.PositionRun(begin={}, length={})", run.begin, run.length);
      });

  nb::class_<PagedSequenceState>(m, "PagedSequenceState", MICACHE_DOC_TYPE(PagedSequenceState))
      .def(nb::init<>(), "An empty sequence state, to fill field by field.")
      .def_rw("id", &PagedSequenceState::id, MICACHE_DOC(PagedSequenceState, id))
      .def_rw("pages", &PagedSequenceState::pages, MICACHE_DOC(PagedSequenceState, pages))
      .def_rw("length", &PagedSequenceState::length, MICACHE_DOC(PagedSequenceState, length))
      .def_rw("positions", &PagedSequenceState::positions, MICACHE_DOC(PagedSequenceState, positions))
      .def_rw("next_position", &PagedSequenceState::next_position, MICACHE_DOC(PagedSequenceState, next_position))
      .def_rw("naming", &PagedSequenceState::naming, MICACHE_DOC(PagedSequenceState, naming))
      .def_rw("salt", &PagedSequenceState::salt, MICACHE_DOC(PagedSequenceState, salt))
      .def_rw("chain", &PagedSequenceState::chain, MICACHE_DOC(PagedSequenceState, chain))
      .def_rw("tail_tokens", &PagedSequenceState::tail_tokens, MICACHE_DOC(PagedSequenceState, tail_tokens))
      .def_rw("row", &PagedSequenceState::row, MICACHE_DOC(PagedSequenceState, row))
      .def(
          "__eq__", [](const PagedSequenceState& a, const PagedSequenceState& b) { return a == b; },
          nb::is_operator())
      .def("__repr__", &sequence_state_repr);

  nb::class_<PagedPageName>(m, "PagedPageName", MICACHE_DOC_TYPE(PagedPageName))
      .def(
          "__init__",
          [](PagedPageName* self, std::int32_t page, std::uint64_t low, std::uint64_t high) {
            new (self) PagedPageName{.page = page, .low = low, .high = high};
          },
          nb::arg("page") = 0, nb::arg("low") = 0, nb::arg("high") = 0, "A page and its name (low, high).")
      .def_rw("page", &PagedPageName::page, "The page id.")
      .def_rw("low", &PagedPageName::low, "Its name's low 64 bits.")
      .def_rw("high", &PagedPageName::high, "Its name's high 64 bits.")
      .def(
          "__eq__", [](const PagedPageName& a, const PagedPageName& b) { return a == b; }, nb::is_operator())
      .def("__repr__", [](const PagedPageName& n) {
        return fmt::format("micache.PagedPageName(page={}, low={:#x}, high={:#x})", n.page, n.low, n.high);
      });

  nb::class_<PagedKvState>(m, "PagedKvState", MICACHE_DOC_TYPE(PagedKvState))
      .def(nb::init<>(), "An empty state, to fill field by field.")
      .def_rw("sequences", &PagedKvState::sequences, MICACHE_DOC(PagedKvState, sequences))
      .def_rw("references", &PagedKvState::references, MICACHE_DOC(PagedKvState, references))
      .def_rw("free_pages", &PagedKvState::free_pages, MICACHE_DOC(PagedKvState, free_pages))
      .def_rw("cached_pages", &PagedKvState::cached_pages, MICACHE_DOC(PagedKvState, cached_pages))
      .def_rw("names", &PagedKvState::names, MICACHE_DOC(PagedKvState, names))
      .def_rw("free_rows", &PagedKvState::free_rows, MICACHE_DOC(PagedKvState, free_rows))
      .def_rw("next_id", &PagedKvState::next_id, MICACHE_DOC(PagedKvState, next_id))
      .def_rw("step", &PagedKvState::step, MICACHE_DOC(PagedKvState, step))
      .def_rw("lookup_tokens", &PagedKvState::lookup_tokens, MICACHE_DOC(PagedKvState, lookup_tokens))
      .def_rw("hit_tokens", &PagedKvState::hit_tokens, "PrefixCacheStats.hit_tokens.")
      .def_rw("hit_pages", &PagedKvState::hit_pages, "PrefixCacheStats.hit_pages.")
      .def_rw("evictions", &PagedKvState::evictions, "PrefixCacheStats.evictions.")
      .def("stored_pages", &PagedKvState::stored_pages, MICACHE_DOC(PagedKvState, stored_pages))
      .def(
          "__eq__", [](const PagedKvState& a, const PagedKvState& b) { return a == b; }, nb::is_operator())
      .def("__repr__", &state_repr);
}

void bind_cache(nb::module_& m) {
  nb::class_<PagedKvCache>(m, "PagedKvCache", MICACHE_DOC_TYPE(PagedKvCache))
      .def(nb::init<const PagedKvConfig&, Device, Stream>(), nb::arg("config"), nb::arg("device") = Device::cpu(),
           nb::arg("stream") = Stream{}, MICACHE_DOC_INIT(PagedKvCache))
      .def_prop_ro("config", &PagedKvCache::config, MICACHE_DOC(PagedKvCache, config))
      .def_prop_ro("num_pages", &PagedKvCache::num_pages, MICACHE_DOC(PagedKvCache, num_pages))
      .def_prop_ro("device", &PagedKvCache::device, "The device the pages live on.")
      .def_prop_ro("stream", &PagedKvCache::stream, "The stream every copy and kernel of the cache runs on.")
      .def_prop_ro("num_sequences", &PagedKvCache::num_sequences, "Sequences alive.")
      .def("__len__", &PagedKvCache::num_sequences, "The number of sequences alive.")
      .def("pages", &PagedKvCache::pages, nb::arg("layer"), MICACHE_DOC(PagedKvCache, pages))
      .def_prop_ro("layer_groups", &PagedKvCache::layer_groups, MICACHE_DOC(PagedKvCache, layer_groups))
      .def("add_sequence", nb::overload_cast<>(&PagedKvCache::add_sequence), MICACHE_DOC(PagedKvCache, add_sequence))
      .def(
          "add_sequence",
          [](PagedKvCache& cache, const std::vector<std::int32_t>& prompt, std::uint64_t salt) {
            return cache.add_sequence(std::span(prompt), salt);
          },
          nb::arg("prompt"), nb::arg("salt") = 0)
      .def("fork", &PagedKvCache::fork, nb::arg("id"), MICACHE_DOC(PagedKvCache, fork))
      .def("release", &PagedKvCache::release, nb::arg("id"), MICACHE_DOC(PagedKvCache, release))
      .def("length", &PagedKvCache::length, nb::arg("id"), MICACHE_DOC(PagedKvCache, length))
      .def("pages_of", &PagedKvCache::pages_of, nb::arg("id"), nb::arg("layer") = 0,
           MICACHE_DOC(PagedKvCache, pages_of))
      .def("positions", &PagedKvCache::positions, nb::arg("id"), MICACHE_DOC(PagedKvCache, positions))
      .def(
          "begin_step",
          [](PagedKvCache& cache, const std::vector<SequenceId>& ids, const std::vector<std::size_t>& new_tokens,
             const std::optional<std::vector<std::int32_t>>& token_ids) {
            return token_ids ? cache.begin_step(ids, new_tokens, *token_ids) : cache.begin_step(ids, new_tokens);
          },
          nb::arg("ids"), nb::arg("new_tokens"), nb::arg("token_ids") = nb::none(),
          MICACHE_DOC(PagedKvCache, begin_step))
      .def(
          "write",
          [](PagedKvCache& cache, std::size_t layer, const PagedStepPlan& plan, const TensorArg& keys,
             const TensorArg& values) {
            cache.write(layer, plan, keys.get(cache.stream()), values.get(cache.stream()));
          },
          nb::arg("layer"), nb::arg("plan"), nb::arg("keys"), nb::arg("values"), MICACHE_DOC(PagedKvCache, write))
      .def("slot_mapping", &PagedKvCache::slot_mapping, nb::arg("plan"), nb::arg("layer"),
           MICACHE_DOC(PagedKvCache, slot_mapping))
      .def("kv_indices", &PagedKvCache::kv_indices, nb::arg("plan"), nb::arg("layer"),
           MICACHE_DOC(PagedKvCache, kv_indices))
      .def("gather", &PagedKvCache::gather, nb::arg("id"), nb::arg("layer"), MICACHE_DOC(PagedKvCache, gather))
      .def(
          "decode_attention",
          [](const PagedKvCache& cache, std::size_t layer, const PagedStepPlan& plan, const TensorArg& queries,
             float scale) { return cache.decode_attention(layer, plan, queries.get(cache.stream()), scale); },
          nb::arg("layer"), nb::arg("plan"), nb::arg("queries"), nb::arg("scale") = 0.0f,
          MICACHE_DOC(PagedKvCache, decode_attention))
      .def(
          "device_accounting",
          [](const PagedKvCache& cache, const std::vector<SequenceId>& ids) { return cache.device_accounting(ids); },
          nb::arg("ids"), MICACHE_DOC(PagedKvCache, device_accounting))
      .def("block_table", &PagedKvCache::block_table, nb::arg("layer") = 0, MICACHE_DOC(PagedKvCache, block_table))
      .def("row_of", &PagedKvCache::row_of, nb::arg("id"), MICACHE_DOC(PagedKvCache, row_of))
      .def("pool_stats", &PagedKvCache::pool_stats, MICACHE_DOC(PagedKvCache, pool_stats))
      .def("prefix_stats", &PagedKvCache::prefix_stats, MICACHE_DOC(PagedKvCache, prefix_stats))
      .def("sequence_stats", &PagedKvCache::sequence_stats, nb::arg("id"), MICACHE_DOC(PagedKvCache, sequence_stats))
      .def("trim_to", &PagedKvCache::trim_to, nb::arg("id"), nb::arg("max_tokens"), MICACHE_DOC(PagedKvCache, trim_to))
      .def("evict_to_window", &PagedKvCache::evict_to_window, nb::arg("id"), nb::arg("sinks"), nb::arg("window"),
           MICACHE_DOC(PagedKvCache, evict_to_window))
      .def(
          "evict_heavy_hitters",
          [](PagedKvCache& cache, SequenceId id, const TensorArg& scores, std::size_t heavy, std::size_t window) {
            return cache.evict_heavy_hitters(id, scores.get(cache.stream()), heavy, window);
          },
          nb::arg("id"), nb::arg("scores"), nb::arg("heavy"), nb::arg("window"),
          MICACHE_DOC(PagedKvCache, evict_heavy_hitters))
      .def_prop_ro("memory_usage", &PagedKvCache::memory_usage, MICACHE_DOC(PagedKvCache, memory_usage))
      .def_prop_ro("memory_reserved", &PagedKvCache::memory_reserved, MICACHE_DOC(PagedKvCache, memory_reserved))
      .def(
          "save", [](const PagedKvCache& cache, const Path& path) { cache.save(path.string()); }, nb::arg("path"),
          MICACHE_DOC(PagedKvCache, save))
      .def_static(
          "load",
          [](const Path& path, Device device, Stream stream) {
            return PagedKvCache::load(path.string(), device, stream);
          },
          nb::arg("path"), nb::arg("device") = Device::cpu(), nb::arg("stream") = Stream{},
          nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(PagedKvCache, load))
      .def("state", &PagedKvCache::state, MICACHE_DOC(PagedKvCache, state))
      .def_static(
          "restore",
          [](const PagedKvConfig& config, const PagedKvState& state, const std::vector<TensorArg>& stored,
             Device device, Stream stream) {
            std::vector<Tensor> tensors;
            tensors.reserve(stored.size());
            for (const TensorArg& tensor : stored) {
              tensors.push_back(tensor.get(stream));
            }
            return PagedKvCache::restore(config, state, tensors, device, stream);
          },
          nb::arg("config"), nb::arg("state"), nb::arg("stored"), nb::arg("device") = Device::cpu(),
          nb::arg("stream") = Stream{}, MICACHE_DOC(PagedKvCache, restore))
      .def("__repr__", &cache_repr);
}

}  // namespace

void bind_paged(nb::module_& m) {
  bind_config(m);
  bind_results(m);
  bind_state(m);
  bind_cache(m);
}

}  // namespace micache::python
