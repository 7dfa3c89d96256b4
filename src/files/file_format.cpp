#include "src/files/file_format.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "micache/error.hpp"
#include "src/core/checks.hpp"

namespace micache::detail {

std::string layer_name(std::size_t layer, const char* suffix) { return fmt::format("blocks.{}.{}", layer, suffix); }

void fail(const SafetensorsReader& file, const std::string& what) {
  throw Error(ErrorCode::Io, fmt::format("{}: {}", file.path(), what));
}

void check_kind(const SafetensorsReader& file, const char* kind) {
  const std::string* saved = file.metadata(kCacheKey);
  if (saved != nullptr && *saved != kind) fail(file, fmt::format("saved by {}, not by {}", *saved, kind));
}

std::size_t count_layers(const SafetensorsReader& file, const char* suffix) {
  std::size_t n = 0;
  while (file.contains(layer_name(n, suffix))) ++n;
  if (n == 0) fail(file, fmt::format("no tensor '{}'", layer_name(0, suffix)));
  return n;
}

Tensor read_float(const SafetensorsReader& file, const std::string& name, Device device, Stream stream) {
  Tensor tensor = file.read(name, device, stream);
  require_float_dtype(tensor.dtype(), fmt::format("{}: tensor '{}'", file.path(), name), ErrorCode::Io);
  return tensor;
}

std::optional<std::uint64_t> metadata_size(const SafetensorsReader& file, const char* key) {
  const std::string* text = file.metadata(key);
  if (text == nullptr) return std::nullopt;
  const nlohmann::json value = nlohmann::json::parse(*text, nullptr, false);
  if (!value.is_number_unsigned()) fail(file, fmt::format("metadata '{}' is not a non-negative integer", key));
  return value.get<std::uint64_t>();
}

std::uint64_t required_size(const SafetensorsReader& file, const char* key) {
  const std::optional<std::uint64_t> value = metadata_size(file, key);
  if (!value) fail(file, fmt::format("metadata '{}' is missing", key));
  return *value;
}

}  // namespace micache::detail
