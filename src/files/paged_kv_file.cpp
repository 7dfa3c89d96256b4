// PagedKvCache's file format: the config, the bytes of the used and cached pages per layer, and the state
// (sequences, pool, free rows, counters) as I64 tensors. Through PagedKvCache's public surface (config, pages,
// state) and its one restore hook, restore.
#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "micache/error.hpp"
#include "micache/paged_kv_cache.hpp"
#include "micache/paged_kv_state.hpp"
#include "micache/safetensors.hpp"
#include "src/files/file_format.hpp"

namespace micache {
namespace {

using Json = nlohmann::json;
using detail::fail;

constexpr const char* kKind = "PagedKvCache";
/// The version of this layout, in metadata `micache.paged_format`.
constexpr const char* kPagedFormat = "micache-paged/2";
// The format before layer kinds: the same tensors, every layer full attention.
constexpr const char* kPagedFormatWithoutKinds = "micache-paged/1";
constexpr const char* kPagesSuffix = "attn.kv_pages";

std::int64_t bits_i64(std::uint64_t value) {
  std::int64_t out = 0;
  std::memcpy(&out, &value, sizeof out);
  return out;
}

std::uint64_t bits_u64(std::int64_t value) {
  std::uint64_t out = 0;
  std::memcpy(&out, &value, sizeof out);
  return out;
}

// Each layer's kind as [window, sinks]; [] when every layer is full.
Json layer_kinds_json(const std::vector<PagedLayerKind>& kinds) {
  Json out = Json::array();
  for (const PagedLayerKind& k : kinds) out.push_back(Json::array({k.window, k.sinks}));
  return out;
}

Json config_json(const PagedKvConfig& c) {
  return {{"n_layers", c.n_layers},           {"kv_heads", c.kv_heads},
          {"head_dim", c.head_dim},           {"page_size", c.page_size},
          {"num_pages", c.num_pages},         {"max_bytes", c.max_bytes},
          {"dtype", dtype_name(c.dtype)},     {"layout", c.layout == PagedLayout::Nhd ? "nhd" : "hnd"},
          {"max_sequences", c.max_sequences}, {"max_sequence_len", c.max_sequence_len},
          {"layer_kinds", layer_kinds_json(c.layer_kinds)}};
}

PagedKvConfig config_of(const SafetensorsReader& file) {
  const std::string* text = file.metadata("micache.config");
  if (text == nullptr) fail(file, "metadata 'micache.config' is missing");
  const Json json = Json::parse(*text, nullptr, false);
  if (!json.is_object()) fail(file, "micache.config is not a JSON object");
  const auto field = [&](const char* name) {
    if (!json.contains(name) || !json[name].is_number_unsigned()) {
      fail(file, fmt::format("micache.config: '{}' is missing or not a non-negative integer", name));
    }
    return static_cast<std::size_t>(json[name].get<std::uint64_t>());
  };
  PagedKvConfig c;
  c.n_layers = field("n_layers");
  c.kv_heads = field("kv_heads");
  c.head_dim = field("head_dim");
  c.page_size = field("page_size");
  c.num_pages = field("num_pages");
  c.max_bytes = field("max_bytes");
  c.max_sequences = field("max_sequences");
  c.max_sequence_len = field("max_sequence_len");
  const Json dtype = json.value("dtype", Json());
  bool known = false;
  for (const DType d : {DType::F32, DType::F16, DType::BF16}) {
    if (dtype == dtype_name(d)) {
      c.dtype = d;
      known = true;
    }
  }
  if (!known) fail(file, "micache.config: 'dtype' must be \"f32\", \"f16\" or \"bf16\"");
  const Json layout = json.value("layout", Json());
  if (layout != "nhd" && layout != "hnd") fail(file, "micache.config: 'layout' must be \"nhd\" or \"hnd\"");
  c.layout = layout == "nhd" ? PagedLayout::Nhd : PagedLayout::Hnd;
  const Json kinds = json.value("layer_kinds", Json::array());
  if (!kinds.is_array()) fail(file, "micache.config: 'layer_kinds' must be an array of [window, sinks]");
  for (const Json& kind : kinds) {
    if (!kind.is_array() || kind.size() != 2 || !kind[0].is_number_unsigned() || !kind[1].is_number_unsigned()) {
      fail(file, "micache.config: 'layer_kinds' must be an array of [window, sinks]");
    }
    c.layer_kinds.push_back(PagedLayerKind{.window = static_cast<std::size_t>(kind[0].get<std::uint64_t>()),
                                           .sinks = static_cast<std::size_t>(kind[1].get<std::uint64_t>())});
  }
  return c;
}

// The bytes of pages `stored` of `pages` (a layer's page tensor), as a host tensor [stored.size(), ...]:
// one device-to-host copy per run of consecutive pages.
Tensor stored_pages(const Tensor& pages, const std::vector<std::int32_t>& stored) {
  std::vector<std::byte> bytes;
  for (std::size_t i = 0, j = 0; i < stored.size(); i = j) {
    for (j = i + 1; j < stored.size() && stored[j] == stored[j - 1] + 1;) ++j;
    const std::vector<std::byte> run = pages.narrow(static_cast<std::size_t>(stored[i]), j - i).to_host_bytes();
    bytes.insert(bytes.end(), run.begin(), run.end());
  }
  std::vector<std::size_t> dims = pages.dims();
  dims[0] = stored.size();
  return Tensor::from_host_bytes(bytes, Shape(dims), pages.dtype());
}

template <class T>
void add_column(SafetensorsWriter& writer, const std::string& name, const std::vector<T>& values) {
  const std::vector<std::int64_t> column(values.begin(), values.end());
  writer.add_i64(name, column, Shape{column.size()});
}

// An I64 tensor of `columns` values per row (1: a list), its row count checked against `rows` when given.
std::vector<std::int64_t> read_rows(const SafetensorsReader& file, const std::string& name, std::size_t columns,
                                    std::optional<std::size_t> rows = std::nullopt) {
  const SafetensorsEntry& entry = file.entry(name);
  const bool shaped = columns == 1 ? entry.shape.size() == 1 : entry.shape.size() == 2 && entry.shape[1] == columns;
  if (entry.dtype != "I64" || !shaped) {
    fail(file, fmt::format("'{}' must be I64 [{}]", name, columns == 1 ? "n" : fmt::format("n, {}", columns)));
  }
  if (rows && entry.shape[0] != *rows) {
    fail(file, fmt::format("'{}' holds {} rows, must hold {}", name, entry.shape[0], *rows));
  }
  return file.read_i64(name);
}

// `values[i]` in [low, high]. Error: Io naming the tensor and the entry.
std::int64_t in_range(const SafetensorsReader& file, const std::string& name, const std::vector<std::int64_t>& values,
                      std::size_t i, std::int64_t low, std::int64_t high) {
  if (values[i] < low || values[i] > high) {
    fail(file, fmt::format("'{}' entry {} is {}, out of range [{}, {}]", name, i, values[i], low, high));
  }
  return values[i];
}

constexpr std::int64_t kI32Min = std::numeric_limits<std::int32_t>::min();
constexpr std::int64_t kI32Max = std::numeric_limits<std::int32_t>::max();
constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();

std::vector<std::int32_t> read_i32s(const SafetensorsReader& file, const std::string& name) {
  const std::vector<std::int64_t> values = read_rows(file, name, 1);
  std::vector<std::int32_t> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    out[i] = static_cast<std::int32_t>(in_range(file, name, values, i, kI32Min, kI32Max));
  }
  return out;
}

// Offsets into a packed list: n + 1 entries rising from 0 to `total`. Error: Io.
std::vector<std::size_t> read_offsets(const SafetensorsReader& file, const std::string& name, std::size_t n,
                                      std::size_t total) {
  const std::vector<std::int64_t> values = read_rows(file, name, 1);
  if (values.size() != n + 1) fail(file, fmt::format("'{}' holds {} rows, must hold {}", name, values.size(), n + 1));
  std::vector<std::size_t> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::int64_t low = i == 0 ? 0 : static_cast<std::int64_t>(out[i - 1]);
    const std::int64_t high = i == 0 ? 0 : static_cast<std::int64_t>(total);
    out[i] = static_cast<std::size_t>(in_range(file, name, values, i, low, high));
  }
  if (out.back() != total) fail(file, fmt::format("'{}' ends at {}, the list holds {}", name, out.back(), total));
  return out;
}

PagedKvState read_state(const SafetensorsReader& file) {
  PagedKvState s;
  const std::vector<std::int64_t> references = read_rows(file, "pool.references", 1);
  for (std::size_t p = 0; p < references.size(); ++p) {
    s.references.push_back(static_cast<std::uint32_t>(
        in_range(file, "pool.references", references, p, 0, std::numeric_limits<std::uint32_t>::max())));
  }
  s.free_pages = read_i32s(file, "pool.free_pages");
  s.cached_pages = read_i32s(file, "pool.cached_pages");
  const std::vector<std::int32_t> named = read_i32s(file, "pool.named_pages");
  const std::vector<std::int64_t> names = read_rows(file, "pool.page_names", 2, named.size());
  for (std::size_t i = 0; i < named.size(); ++i) {
    s.names.push_back(
        PagedPageName{.page = named[i], .low = bits_u64(names[2 * i]), .high = bits_u64(names[2 * i + 1])});
  }
  s.free_rows = read_i32s(file, "tables.free_rows");
  const std::vector<std::int64_t> ids = read_rows(file, "sequences.ids", 1);
  const std::size_t n = ids.size();
  const std::vector<std::int64_t> lengths = read_rows(file, "sequences.lengths", 1, n);
  const std::vector<std::int64_t> next_positions = read_rows(file, "sequences.next_positions", 1, n);
  const std::vector<std::int64_t> rows = read_rows(file, "sequences.rows", 1, n);
  const std::vector<std::int64_t> naming = read_rows(file, "sequences.naming", 1, n);
  const std::vector<std::int64_t> salts = read_rows(file, "sequences.salts", 1, n);
  const std::vector<std::int64_t> chains = read_rows(file, "sequences.chains", 2, n);
  const std::vector<std::int32_t> pages = read_i32s(file, "sequences.pages");
  const std::vector<std::size_t> page_at = read_offsets(file, "sequences.page_offsets", n, pages.size());
  const std::vector<std::int64_t> runs = read_rows(file, "sequences.runs", 2);
  const std::vector<std::size_t> run_at = read_offsets(file, "sequences.run_offsets", n, runs.size() / 2);
  const std::vector<std::int32_t> tails = read_i32s(file, "sequences.tail_tokens");
  const std::vector<std::size_t> tail_at = read_offsets(file, "sequences.tail_offsets", n, tails.size());
  for (std::size_t i = 0; i < n; ++i) {
    PagedSequenceState q;
    q.id = static_cast<std::uint64_t>(in_range(file, "sequences.ids", ids, i, 0, kI64Max));
    q.length = static_cast<std::size_t>(in_range(file, "sequences.lengths", lengths, i, 0, kI64Max));
    q.next_position =
        static_cast<std::size_t>(in_range(file, "sequences.next_positions", next_positions, i, 0, kI64Max));
    q.row = static_cast<std::size_t>(in_range(file, "sequences.rows", rows, i, 0, kI64Max));
    q.naming = in_range(file, "sequences.naming", naming, i, 0, 1) == 1;
    q.salt = bits_u64(salts[i]);
    q.chain = {bits_u64(chains[2 * i]), bits_u64(chains[2 * i + 1])};
    q.pages.assign(pages.begin() + static_cast<std::ptrdiff_t>(page_at[i]),
                   pages.begin() + static_cast<std::ptrdiff_t>(page_at[i + 1]));
    for (std::size_t r = 2 * run_at[i]; r < 2 * run_at[i + 1]; r += 2) {
      const std::size_t begin = static_cast<std::size_t>(in_range(file, "sequences.runs", runs, r, 0, kI64Max));
      const std::size_t length = static_cast<std::size_t>(in_range(file, "sequences.runs", runs, r + 1, 0, kI64Max));
      q.positions.push_back({begin, length});
    }
    q.tail_tokens.assign(tails.begin() + static_cast<std::ptrdiff_t>(tail_at[i]),
                         tails.begin() + static_cast<std::ptrdiff_t>(tail_at[i + 1]));
    s.sequences.push_back(std::move(q));
  }
  s.next_id = detail::required_size(file, "micache.next_id");
  s.step = detail::required_size(file, "micache.step");
  s.lookup_tokens = detail::required_size(file, "micache.lookup_tokens");
  s.hit_tokens = detail::required_size(file, "micache.hit_tokens");
  s.hit_pages = detail::required_size(file, "micache.hit_pages");
  s.evictions = detail::required_size(file, "micache.evictions");
  return s;
}

}  // namespace

void PagedKvCache::save(const std::string& path) const {
  const PagedKvState s = state();
  const std::vector<std::int32_t> stored = s.stored_pages();
  SafetensorsWriter writer;
  for (std::size_t l = 0; l < pages_.size(); ++l) {
    writer.add(detail::layer_name(l, kPagesSuffix), stored_pages(pages_[l], stored));
  }
  add_column(writer, "pool.references", s.references);
  add_column(writer, "pool.free_pages", s.free_pages);
  add_column(writer, "pool.cached_pages", s.cached_pages);
  std::vector<std::int64_t> named, names;
  for (const PagedPageName& name : s.names) {
    named.push_back(name.page);
    names.push_back(bits_i64(name.low));
    names.push_back(bits_i64(name.high));
  }
  writer.add_i64("pool.named_pages", named, Shape{named.size()});
  writer.add_i64("pool.page_names", names, Shape{named.size(), 2});
  add_column(writer, "tables.free_rows", s.free_rows);
  std::vector<std::int64_t> ids, lengths, next_positions, rows, naming, salts, chains;
  std::vector<std::int64_t> pages, page_at{0}, runs, run_at{0}, tails, tail_at{0};
  for (const PagedSequenceState& q : s.sequences) {
    ids.push_back(bits_i64(q.id));
    lengths.push_back(static_cast<std::int64_t>(q.length));
    next_positions.push_back(static_cast<std::int64_t>(q.next_position));
    rows.push_back(static_cast<std::int64_t>(q.row));
    naming.push_back(q.naming ? 1 : 0);
    salts.push_back(bits_i64(q.salt));
    chains.push_back(bits_i64(q.chain[0]));
    chains.push_back(bits_i64(q.chain[1]));
    pages.insert(pages.end(), q.pages.begin(), q.pages.end());
    page_at.push_back(static_cast<std::int64_t>(pages.size()));
    for (const PositionRuns::Run& run : q.positions) {
      runs.push_back(static_cast<std::int64_t>(run.begin));
      runs.push_back(static_cast<std::int64_t>(run.length));
    }
    run_at.push_back(static_cast<std::int64_t>(runs.size() / 2));
    tails.insert(tails.end(), q.tail_tokens.begin(), q.tail_tokens.end());
    tail_at.push_back(static_cast<std::int64_t>(tails.size()));
  }
  for (const auto& [name, column] :
       {std::pair{"sequences.ids", &ids}, std::pair{"sequences.lengths", &lengths},
        std::pair{"sequences.next_positions", &next_positions}, std::pair{"sequences.rows", &rows},
        std::pair{"sequences.naming", &naming}, std::pair{"sequences.salts", &salts},
        std::pair{"sequences.pages", &pages}, std::pair{"sequences.page_offsets", &page_at},
        std::pair{"sequences.run_offsets", &run_at}, std::pair{"sequences.tail_tokens", &tails},
        std::pair{"sequences.tail_offsets", &tail_at}}) {
    add_column(writer, name, *column);
  }
  writer.add_i64("sequences.chains", chains, Shape{ids.size(), 2});
  writer.add_i64("sequences.runs", runs, Shape{runs.size() / 2, 2});
  writer.set_metadata(detail::kCacheKey, kKind);
  writer.set_metadata("micache.paged_format", kPagedFormat);
  writer.set_metadata("micache.config", config_json(config_).dump());
  writer.set_metadata("micache.next_id", std::to_string(s.next_id));
  writer.set_metadata("micache.step", std::to_string(s.step));
  writer.set_metadata("micache.lookup_tokens", std::to_string(s.lookup_tokens));
  writer.set_metadata("micache.hit_tokens", std::to_string(s.hit_tokens));
  writer.set_metadata("micache.hit_pages", std::to_string(s.hit_pages));
  writer.set_metadata("micache.evictions", std::to_string(s.evictions));
  writer.write(path);
}

PagedKvCache PagedKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const std::string* saved = file.metadata(detail::kCacheKey);
  if (saved == nullptr || *saved != kKind) {
    fail(file, fmt::format("saved by {}, not by {}", saved == nullptr ? "no micache class" : *saved, kKind));
  }
  const std::string* format = file.metadata("micache.paged_format");
  if (format == nullptr || (*format != kPagedFormat && *format != kPagedFormatWithoutKinds)) {
    fail(file, fmt::format("paged format '{}', this build reads '{}'", format == nullptr ? "" : *format, kPagedFormat));
  }
  const PagedKvConfig config = config_of(file);
  const PagedKvState state = read_state(file);
  std::vector<Tensor> stored;
  for (std::size_t l = 0; l < config.layer_groups().group_size; ++l) {
    stored.push_back(detail::read_float(file, detail::layer_name(l, kPagesSuffix), device, stream));
  }
  try {
    return restore(config, state, stored, device, stream);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::Config && e.code() != ErrorCode::Shape) throw;
    fail(file, e.what());
  }
}

}  // namespace micache
