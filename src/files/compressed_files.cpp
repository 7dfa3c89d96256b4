// The compressed caches' file format: the records as CompressedHeads::records gives them, the config, and each
// class's settings. Through each class's public surface (constructor, heads(), its counts and settings) and, for
// SlidingWindowKvCache, its one restore hook, restore.
#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "micache/error.hpp"
#include "micache/gqa_kv_cache.hpp"
#include "micache/kv_cache_compressor.hpp"
#include "micache/multi_head_kv_cache.hpp"
#include "micache/safetensors.hpp"
#include "src/files/file_format.hpp"
#include "src/quant/head_tables.hpp"
#include "src/quant/record_format.hpp"

namespace micache {
namespace {

using Json = nlohmann::json;
using detail::fail;

// The most a file's config may make a load allocate for per-head tables
// (dominated by the keys' QJL matrices, heads x projections x padded head_dim
// f32): real models need a few MiB; a crafted 300-byte file could ask for tens of GiB.
constexpr std::uint64_t kMaxFileTableBytes = 256u << 20;

Json config_json(const KvCacheConfig& config) {
  return {{"head_dim", config.head_dim},       {"bits", config.bits},
          {"projections", config.projections}, {"seed", config.seed},
          {"value_bits", config.value_bits},   {"estimator", config.estimator == ScoreEstimator::Qjl ? "qjl" : "mse"}};
}

KvCacheConfig config_of(const SafetensorsReader& file) {
  const std::string* text = file.metadata("micache.config");
  if (text == nullptr) fail(file, "metadata 'micache.config' is missing");
  const Json json = Json::parse(*text, nullptr, false);
  const auto field = [&](const char* name) {
    if (!json.is_object() || !json.contains(name) || !json[name].is_number_unsigned()) {
      fail(file, fmt::format("micache.config: '{}' is missing or not a non-negative integer", name));
    }
    return json[name].get<std::uint64_t>();
  };
  KvCacheConfig config;
  config.head_dim = static_cast<std::size_t>(field("head_dim"));
  config.projections = static_cast<std::size_t>(field("projections"));
  config.seed = field("seed");
  const std::uint64_t bits = field("bits");
  const std::uint64_t value_bits = field("value_bits");
  if (bits > 64 || value_bits > 64) fail(file, "micache.config: bit widths out of range");
  config.bits = static_cast<unsigned>(bits);
  config.value_bits = static_cast<unsigned>(value_bits);
  const Json estimator = json.value("estimator", Json());
  if (estimator == "qjl") {
    config.estimator = ScoreEstimator::Qjl;
  } else if (estimator != "mse") {
    fail(file, "micache.config: 'estimator' must be \"mse\" or \"qjl\"");
  }
  try {
    config.validate();
  } catch (const Error& e) {
    fail(file, fmt::format("micache.config: {}", e.what()));
  }
  return config;
}

// Checks a compressed cache file's class and record format; returns its config and head count.
std::pair<KvCacheConfig, std::size_t> compressed_header(const SafetensorsReader& file, const char* kind) {
  const std::string* saved = file.metadata(detail::kCacheKey);
  if (saved == nullptr || *saved != kind) {
    fail(file, fmt::format("saved by {}, not by {}", saved == nullptr ? "no micache class" : *saved, kind));
  }
  const std::string* format = file.metadata("micache.quantizer");
  if (format == nullptr || *format != detail::kRecordFormat) {
    fail(file, fmt::format("record format '{}', this build reads '{}'", format == nullptr ? "" : *format,
                           detail::kRecordFormat));
  }
  const std::uint64_t heads = detail::required_size(file, "micache.num_heads");
  if (heads == 0 || heads > (1u << 20)) fail(file, fmt::format("micache.num_heads {} out of range", heads));
  const KvCacheConfig config = config_of(file);
  const std::uint64_t table_bytes = detail::projection_bytes(heads, config);
  if (table_bytes > kMaxFileTableBytes) {
    fail(file, fmt::format("micache.config asks for {} bytes of QJL tables ({} heads); a file may ask for at most {}",
                           table_bytes, heads, kMaxFileTableBytes));
  }
  return {config, static_cast<std::size_t>(heads)};
}

// Metadata micache.num_query_heads: a positive multiple of the file's `kv_heads`. Error: Io.
std::size_t query_heads_of(const SafetensorsReader& file, std::size_t kv_heads) {
  const std::uint64_t query_heads = detail::required_size(file, "micache.num_query_heads");
  if (query_heads == 0 || query_heads % kv_heads != 0 || query_heads / kv_heads > (1u << 20)) {
    fail(file, fmt::format("micache.num_query_heads {} is not a multiple of {} kv heads", query_heads, kv_heads));
  }
  return static_cast<std::size_t>(query_heads);
}

// The file's key and value records, on `heads`' device, as `heads` takes them. A size that does not match is Io.
std::pair<Tensor, Tensor> read_records(const SafetensorsReader& file, const CompressedHeads& heads) {
  const SafetensorsEntry& keys = file.entry("key_records");
  const SafetensorsEntry& values = file.entry("value_records");
  const auto check = [&](const SafetensorsEntry& entry, const char* name, std::size_t bytes) {
    if (entry.dtype != "U8" || entry.shape.size() != 3 || entry.shape[0] != heads.num_heads() ||
        entry.shape[2] != bytes || entry.shape[1] != keys.shape[1]) {
      fail(file, fmt::format("'{}' must be U8 [{}, tokens, {}] with as many tokens as key_records", name,
                             heads.num_heads(), bytes));
    }
  };
  check(keys, "key_records", heads.key_record_bytes());
  check(values, "value_records", heads.value_record_bytes());
  return {file.read("key_records", heads.device(), heads.stream()),
          file.read("value_records", heads.device(), heads.stream())};
}

// Writes `heads`' records under class name `kind`, with the class's `settings` added to the metadata.
void save_records(const std::string& path, const CompressedHeads& heads, const char* kind,
                  const std::map<std::string, std::string>& settings) {
  SafetensorsWriter writer;
  const auto [keys, values] = heads.records();
  writer.add("key_records", keys);
  writer.add("value_records", values);
  writer.set_metadata(detail::kCacheKey, kind);
  writer.set_metadata("micache.quantizer", detail::kRecordFormat);
  writer.set_metadata("micache.config", config_json(heads.config()).dump());
  writer.set_metadata("micache.num_heads", std::to_string(heads.num_heads()));
  for (const auto& [key, value] : settings) writer.set_metadata(key, value);
  writer.write(path);
}

// Loads the records of a cache already constructed from the file's header into its store.
template <class Cache>
Cache with_records(const SafetensorsReader& file, Cache cache) {
  const auto [keys, values] = read_records(file, cache.heads());
  cache.heads().assign_records(keys, values);
  return cache;
}

}  // namespace

void KvCacheCompressor::save(const std::string& path) const { save_records(path, heads(), "KvCacheCompressor", {}); }

KvCacheCompressor KvCacheCompressor::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "KvCacheCompressor");
  if (heads != 1) fail(file, fmt::format("micache.num_heads is {}, a KvCacheCompressor has 1", heads));
  return with_records(file, KvCacheCompressor(config, device, stream));
}

void MultiHeadKvCache::save(const std::string& path) const { save_records(path, heads(), "MultiHeadKvCache", {}); }

MultiHeadKvCache MultiHeadKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "MultiHeadKvCache");
  return with_records(file, MultiHeadKvCache(heads, config, device, stream));
}

void GqaKvCache::save(const std::string& path) const {
  save_records(path, heads(), "GqaKvCache", {{"micache.num_query_heads", std::to_string(num_query_heads())}});
}

GqaKvCache GqaKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "GqaKvCache");
  return with_records(file, GqaKvCache(heads, query_heads_of(file, heads), config, device, stream));
}

void SlidingWindowKvCache::save(const std::string& path) const {
  save_records(path, cache().heads(), "SlidingWindowKvCache",
               {{"micache.num_query_heads", std::to_string(cache().num_query_heads())},
                {"micache.window_size", std::to_string(window_size())},
                {"micache.total_tokens_seen", std::to_string(total_tokens_seen())}});
}

SlidingWindowKvCache SlidingWindowKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "SlidingWindowKvCache");
  const std::size_t query_heads = query_heads_of(file, heads);
  const std::uint64_t window = detail::required_size(file, "micache.window_size");
  const std::uint64_t seen = detail::required_size(file, "micache.total_tokens_seen");
  if (window == 0) fail(file, "micache.window_size is 0");
  SlidingWindowKvCache cache(heads, query_heads, static_cast<std::size_t>(window), config, device, stream);
  const auto [keys, values] = read_records(file, cache.cache().heads());
  try {
    cache.restore(keys, values, static_cast<std::size_t>(seen));
  } catch (const Error& e) {
    fail(file, e.what());
  }
  return cache;
}

}  // namespace micache
