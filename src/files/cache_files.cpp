// save and load of every cache, in safetensors files (see each class's header
// for the tensor names and metadata it writes).
#include <fmt/format.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "micache/activation_cache.hpp"
#include "micache/attention_cache.hpp"
#include "micache/backend/detail/turbo_quant.hpp"
#include "micache/error.hpp"
#include "micache/full_activation_cache.hpp"
#include "micache/gqa_kv_cache.hpp"
#include "micache/kv_cache.hpp"
#include "micache/multi_head_kv_cache.hpp"
#include "micache/safetensors.hpp"

namespace micache {
namespace {

using Json = nlohmann::json;

constexpr const char* kCacheKey = "micache.cache";
// The most layers a KV cache file may declare (each costs a little host memory
// even when empty); models have at most a few hundred.
constexpr std::uint64_t kMaxFileLayers = 4096;
// Version of the compressed record format (detail::RecordLayout and the
// quantiser's randomness): a file is only read by a build that encodes alike.
constexpr const char* kQuantizer = "turboquant-hadamard2-lloydmax-qjl/1";

std::string layer_name(std::size_t layer, const char* suffix) { return fmt::format("blocks.{}.{}", layer, suffix); }

[[noreturn]] void fail(const SafetensorsReader& file, const std::string& what) {
  throw Error(ErrorCode::Io, fmt::format("{}: {}", file.path(), what));
}

// Files saved by micache name their class; files from elsewhere (Python) do not and are accepted.
void check_kind(const SafetensorsReader& file, const char* kind) {
  const std::string* saved = file.metadata(kCacheKey);
  if (saved != nullptr && *saved != kind) fail(file, fmt::format("saved by {}, not by {}", *saved, kind));
}

// The count of consecutive layers 0, 1, ... that have tensor `suffix`. Error: Io when there is none.
std::size_t count_layers(const SafetensorsReader& file, const char* suffix) {
  std::size_t n = 0;
  while (file.contains(layer_name(n, suffix))) ++n;
  if (n == 0) fail(file, fmt::format("no tensor '{}'", layer_name(0, suffix)));
  return n;
}

// Reads a float tensor: a file that names an I32 or U8 tensor where a float one belongs is malformed.
Tensor read_float(const SafetensorsReader& file, const std::string& name, Device device, Stream stream) {
  Tensor tensor = file.read(name, device, stream);
  if (!is_float_dtype(tensor.dtype())) {
    fail(file,
         fmt::format("tensor '{}' is {}, a float dtype (F32, F16, BF16) is needed", name, dtype_name(tensor.dtype())));
  }
  return tensor;
}

void save_layers(const std::vector<Tensor>& layers, const char* suffix, const char* kind, const std::string& path) {
  SafetensorsWriter writer;
  for (std::size_t i = 0; i < layers.size(); ++i) writer.add(layer_name(i, suffix), layers[i]);
  writer.set_metadata(kCacheKey, kind);
  writer.write(path);
}

// Pushes the file's layers, allocated on `stream`, into `make(layer count)`.
template <class Make>
auto load_layers(const std::string& path, Device device, Stream stream, const char* suffix, const char* kind,
                 Make make) {
  const SafetensorsReader file(path);
  check_kind(file, kind);
  const std::size_t n = count_layers(file, suffix);
  auto cache = make(n);
  for (std::size_t i = 0; i < n; ++i) cache.push(read_float(file, layer_name(i, suffix), device, stream));
  return cache;
}

// A non-negative integer from metadata `key`, or nullopt when the key is absent. Error: Io when malformed.
std::optional<std::uint64_t> metadata_size(const SafetensorsReader& file, const char* key) {
  const std::string* text = file.metadata(key);
  if (text == nullptr) return std::nullopt;
  const Json value = Json::parse(*text, nullptr, false);
  if (!value.is_number_unsigned()) fail(file, fmt::format("metadata '{}' is not a non-negative integer", key));
  return value.get<std::uint64_t>();
}

std::uint64_t required_size(const SafetensorsReader& file, const char* key) {
  const std::optional<std::uint64_t> value = metadata_size(file, key);
  if (!value) fail(file, fmt::format("metadata '{}' is missing", key));
  return *value;
}

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

// The most a file's config may make a load allocate for per-head tables
// (dominated by the keys' QJL matrices, heads x projections x padded head_dim
// f32): real models need a few MiB; a crafted 300-byte file could ask for tens of GiB.
constexpr std::uint64_t kMaxFileTableBytes = 256u << 20;

// Checks a compressed cache file's class and record format; returns its config and head count.
std::pair<KvCacheConfig, std::size_t> compressed_header(const SafetensorsReader& file, const char* kind) {
  const std::string* saved = file.metadata(kCacheKey);
  if (saved == nullptr || *saved != kind) {
    fail(file, fmt::format("saved by {}, not by {}", saved == nullptr ? "no micache class" : *saved, kind));
  }
  const std::string* quantizer = file.metadata("micache.quantizer");
  if (quantizer == nullptr || *quantizer != kQuantizer) {
    fail(file,
         fmt::format("record format '{}', this build reads '{}'", quantizer == nullptr ? "" : *quantizer, kQuantizer));
  }
  const std::uint64_t heads = required_size(file, "micache.num_heads");
  if (heads == 0 || heads > (1u << 20)) fail(file, fmt::format("micache.num_heads {} out of range", heads));
  const KvCacheConfig config = config_of(file);
  const std::uint64_t table_bytes = heads * config.projections *
                                    detail::next_power_of_two(static_cast<std::uint32_t>(config.head_dim)) *
                                    sizeof(float);
  if (table_bytes > kMaxFileTableBytes) {
    fail(file, fmt::format("micache.config asks for {} bytes of QJL tables ({} heads); a file may ask for at most {}",
                           table_bytes, heads, kMaxFileTableBytes));
  }
  return {config, static_cast<std::size_t>(heads)};
}

// Metadata micache.num_query_heads: a positive multiple of the file's `kv_heads`. Error: Io.
std::size_t query_heads_of(const SafetensorsReader& file, std::size_t kv_heads) {
  const std::uint64_t query_heads = required_size(file, "micache.num_query_heads");
  if (query_heads == 0 || query_heads % kv_heads != 0 || query_heads / kv_heads > (1u << 20)) {
    fail(file, fmt::format("micache.num_query_heads {} is not a multiple of {} kv heads", query_heads, kv_heads));
  }
  return static_cast<std::size_t>(query_heads);
}

// Fills `heads` with the file's records. A size that does not match the config is Io.
void read_records(const SafetensorsReader& file, CompressedHeads& heads) {
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
  heads.assign_records(file.read("key_records", heads.device(), heads.stream()),
                       file.read("value_records", heads.device(), heads.stream()));
}

}  // namespace

void AttentionCache::save(const std::string& path) const {
  save_layers(patterns_, "attn.hook_pattern", "AttentionCache", path);
}

AttentionCache AttentionCache::load(const std::string& path, Device device, Stream stream) {
  return load_layers(path, device, stream, "attn.hook_pattern", "AttentionCache",
                     [&](std::size_t n) { return AttentionCache::with_capacity(n, stream); });
}

void ActivationCache::save(const std::string& path) const {
  save_layers(activations_, "hook_resid_post", "ActivationCache", path);
}

ActivationCache ActivationCache::load(const std::string& path, Device device, Stream stream) {
  return load_layers(path, device, stream, "hook_resid_post", "ActivationCache", &ActivationCache::with_capacity);
}

void FullActivationCache::save(const std::string& path) const {
  save_layers(activations_, "hook_resid_post", "FullActivationCache", path);
}

FullActivationCache FullActivationCache::load(const std::string& path, Device device, Stream stream) {
  return load_layers(path, device, stream, "hook_resid_post", "FullActivationCache",
                     [&](std::size_t n) { return FullActivationCache::with_capacity(n, stream); });
}

void KVCache::save(const std::string& path) const {
  SafetensorsWriter writer;
  Json next_positions = Json::array();
  for (std::size_t i = 0; i < n_layers(); ++i) {
    next_positions.push_back(next_position(i));
    const Tensor layer_keys = keys(i);
    if (!layer_keys.defined()) continue;  // an empty layer
    writer.add(layer_name(i, "attn.k_cache"), layer_keys);
    writer.add(layer_name(i, "attn.v_cache"), values(i));
    const std::vector<std::size_t> kept = positions(i);
    const std::vector<std::int64_t> as_i64(kept.begin(), kept.end());
    writer.add_i64(layer_name(i, "attn.positions"), as_i64, Shape{as_i64.size()});
  }
  writer.set_metadata(kCacheKey, "KVCache");
  writer.set_metadata("micache.n_layers", std::to_string(n_layers()));
  writer.set_metadata("micache.next_positions", next_positions.dump());
  writer.write(path);
}

KVCache KVCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  check_kind(file, "KVCache");
  const std::optional<std::uint64_t> saved_layers = metadata_size(file, "micache.n_layers");
  if (saved_layers && *saved_layers > kMaxFileLayers) {
    fail(file, fmt::format("micache.n_layers {} exceeds the {} a file may hold", *saved_layers, kMaxFileLayers));
  }
  const std::size_t n = saved_layers ? static_cast<std::size_t>(*saved_layers) : count_layers(file, "attn.k_cache");
  Json next_positions = Json::array();
  if (const std::string* text = file.metadata("micache.next_positions")) {
    next_positions = Json::parse(*text, nullptr, false);
    if (!next_positions.is_array() || next_positions.size() != n) {
      fail(file, fmt::format("micache.next_positions must be an array of {} integers", n));
    }
  }
  KVCache cache(n, stream);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string k = layer_name(i, "attn.k_cache");
    const std::string v = layer_name(i, "attn.v_cache");
    if (!file.contains(k) && !file.contains(v)) continue;
    cache.set_layer(i, read_float(file, k, device, stream), read_float(file, v, device, stream));
    const std::size_t length = cache.seq_len(i);
    std::vector<std::size_t> kept(length);
    for (std::size_t t = 0; t < length; ++t) kept[t] = t;
    const std::string p = layer_name(i, "attn.positions");
    if (file.contains(p)) {
      const std::vector<std::int64_t> saved = file.read_i64(p);
      if (saved.size() != length)
        fail(file, fmt::format("'{}' holds {} positions for {} tokens", p, saved.size(), length));
      for (std::size_t t = 0; t < length; ++t) {
        if (saved[t] < 0) fail(file, fmt::format("'{}' entry {} is negative", p, t));
        kept[t] = static_cast<std::size_t>(saved[t]);
      }
    }
    std::size_t next = length == 0 ? 0 : kept.back() + 1;
    if (!next_positions.empty()) {
      if (!next_positions[i].is_number_unsigned()) fail(file, "micache.next_positions holds a non-integer");
      next = static_cast<std::size_t>(next_positions[i].get<std::uint64_t>());
    }
    try {
      cache.restore_positions(i, kept, next);
    } catch (const Error& e) {
      fail(file, e.what());
    }
  }
  return cache;
}

void CompressedCacheBase::save(const std::string& path) const { save_with(path, kind_, {}); }

void CompressedCacheBase::save_with(const std::string& path, const char* kind,
                                    const std::map<std::string, std::string>& settings) const {
  SafetensorsWriter writer;
  const auto [keys, values] = heads_.records();
  writer.add("key_records", keys);
  writer.add("value_records", values);
  writer.set_metadata(kCacheKey, kind);
  writer.set_metadata("micache.quantizer", kQuantizer);
  writer.set_metadata("micache.config", config_json(heads_.config()).dump());
  writer.set_metadata("micache.num_heads", std::to_string(heads_.num_heads()));
  for (const auto& [key, value] : settings) writer.set_metadata(key, value);
  writer.write(path);
}

KvCacheCompressor KvCacheCompressor::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "KvCacheCompressor");
  if (heads != 1) fail(file, fmt::format("micache.num_heads is {}, a KvCacheCompressor has 1", heads));
  KvCacheCompressor cache(config, device, stream);
  read_records(file, cache.heads_);
  return cache;
}

MultiHeadKvCache MultiHeadKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "MultiHeadKvCache");
  MultiHeadKvCache cache(heads, config, device, stream);
  read_records(file, cache.heads_);
  return cache;
}

void GqaKvCache::save(const std::string& path) const {
  save_with(path, kind_, {{"micache.num_query_heads", std::to_string(num_query_heads())}});
}

GqaKvCache GqaKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "GqaKvCache");
  GqaKvCache cache(heads, query_heads_of(file, heads), config, device, stream);
  read_records(file, cache.heads_);
  return cache;
}

void SlidingWindowKvCache::save(const std::string& path) const {
  cache_.save_with(path, "SlidingWindowKvCache",
                   {{"micache.num_query_heads", std::to_string(cache_.num_query_heads())},
                    {"micache.window_size", std::to_string(window_size_)},
                    {"micache.total_tokens_seen", std::to_string(total_tokens_seen_)}});
}

SlidingWindowKvCache SlidingWindowKvCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  const auto [config, heads] = compressed_header(file, "SlidingWindowKvCache");
  const std::size_t query_heads = query_heads_of(file, heads);
  const std::uint64_t window = required_size(file, "micache.window_size");
  const std::uint64_t seen = required_size(file, "micache.total_tokens_seen");
  if (window == 0) fail(file, "micache.window_size is 0");
  SlidingWindowKvCache cache(heads, query_heads, static_cast<std::size_t>(window), config, device, stream);
  read_records(file, cache.cache_.heads());
  if (cache.window_len() > window || seen < cache.window_len()) {
    fail(file, fmt::format("{} tokens held, window {}, {} seen", cache.window_len(), window, seen));
  }
  cache.total_tokens_seen_ = static_cast<std::size_t>(seen);
  return cache;
}

}  // namespace micache
