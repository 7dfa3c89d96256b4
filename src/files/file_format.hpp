// Private: what every cache's file format shares: the class key, tensor names, metadata readers and Io errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "micache/device.hpp"
#include "micache/safetensors.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache::detail {

/// Metadata key naming the class that wrote a file (`AttentionCache`, `KVCache`, ...).
inline constexpr const char* kCacheKey = "micache.cache";

/// TransformerLens's tensor name of layer `layer`: `blocks.{layer}.{suffix}`.
std::string layer_name(std::size_t layer, const char* suffix);

/// Throws Io `"{path}: {what}"`.
[[noreturn]] void fail(const SafetensorsReader& file, const std::string& what);

/// Io `saved by {saved}, not by {kind}` when the file names another class.
/// Files without the key (written by Python) are accepted.
void check_kind(const SafetensorsReader& file, const char* kind);

/// The count of consecutive layers 0, 1, ... that have tensor `suffix`. Error: Io when there is none.
std::size_t count_layers(const SafetensorsReader& file, const char* suffix);

/// Tensor `name` on `device`, allocated on `stream`. Error: Io (detail::require_float_dtype's
/// wording) when it is not F32, F16 or BF16: a file with an integer tensor there is malformed.
Tensor read_float(const SafetensorsReader& file, const std::string& name, Device device, Stream stream);

/// A non-negative integer from metadata `key`, or nullopt when the key is absent. Error: Io when malformed.
std::optional<std::uint64_t> metadata_size(const SafetensorsReader& file, const char* key);

/// As metadata_size, and Io `metadata '{key}' is missing` when absent.
std::uint64_t required_size(const SafetensorsReader& file, const char* key);

}  // namespace micache::detail
