// KVCache's file format: dense keys and values per layer (Hugging Face's past_key_values layout) and the kept
// positions. Through KVCache's public surface only (n_layers, keys, values, positions, next_position, seq_len,
// set_layer) and its one restore hook, restore_positions.
#include <fmt/format.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "micache/error.hpp"
#include "micache/kv_cache.hpp"
#include "micache/safetensors.hpp"
#include "src/files/file_format.hpp"

namespace micache {
namespace {

using Json = nlohmann::json;
using detail::fail;
using detail::layer_name;

// The most layers a KV cache file may declare (each costs a little host memory
// even when empty); models have at most a few hundred.
constexpr std::uint64_t kMaxFileLayers = 4096;

// Layer `layer`'s saved positions (0..length-1 when the file has none). Error: Io.
std::vector<std::size_t> kept_positions(const SafetensorsReader& file, std::size_t layer, std::size_t length) {
  std::vector<std::size_t> kept(length);
  for (std::size_t t = 0; t < length; ++t) kept[t] = t;
  const std::string p = layer_name(layer, "attn.positions");
  if (!file.contains(p)) return kept;
  const std::vector<std::int64_t> saved = file.read_i64(p);
  if (saved.size() != length) fail(file, fmt::format("'{}' holds {} positions for {} tokens", p, saved.size(), length));
  for (std::size_t t = 0; t < length; ++t) {
    if (saved[t] < 0) fail(file, fmt::format("'{}' entry {} is negative", p, t));
    kept[t] = static_cast<std::size_t>(saved[t]);
  }
  return kept;
}

}  // namespace

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
  writer.set_metadata(detail::kCacheKey, "KVCache");
  writer.set_metadata("micache.n_layers", std::to_string(n_layers()));
  writer.set_metadata("micache.next_positions", next_positions.dump());
  writer.write(path);
}

KVCache KVCache::load(const std::string& path, Device device, Stream stream) {
  const SafetensorsReader file(path);
  detail::check_kind(file, "KVCache");
  const std::optional<std::uint64_t> saved_layers = detail::metadata_size(file, "micache.n_layers");
  if (saved_layers && *saved_layers > kMaxFileLayers) {
    fail(file, fmt::format("micache.n_layers {} exceeds the {} a file may hold", *saved_layers, kMaxFileLayers));
  }
  const std::size_t n =
      saved_layers ? static_cast<std::size_t>(*saved_layers) : detail::count_layers(file, "attn.k_cache");
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
    cache.set_layer(i, detail::read_float(file, k, device, stream), detail::read_float(file, v, device, stream));
    const std::size_t length = cache.seq_len(i);
    const std::vector<std::size_t> kept = kept_positions(file, i, length);
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

}  // namespace micache
