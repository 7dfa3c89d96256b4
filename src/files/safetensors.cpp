#include "micache/safetensors.hpp"

#include <fmt/format.h>

#include <array>
#include <bit>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "micache/error.hpp"

namespace micache {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; so is every target we build");

using Json = nlohmann::json;

struct DTypeName {
  const char* name;
  std::size_t size;
};

// Every dtype safetensors defines, with its element size.
constexpr std::array<DTypeName, 15> kSafetensorsDTypes{{{"BOOL", 1},
                                                        {"U8", 1},
                                                        {"I8", 1},
                                                        {"F8_E5M2", 1},
                                                        {"F8_E4M3", 1},
                                                        {"I16", 2},
                                                        {"U16", 2},
                                                        {"F16", 2},
                                                        {"BF16", 2},
                                                        {"I32", 4},
                                                        {"U32", 4},
                                                        {"F32", 4},
                                                        {"F64", 8},
                                                        {"I64", 8},
                                                        {"U64", 8}}};

std::optional<std::size_t> safetensors_dtype_size(const std::string& name) {
  for (const DTypeName& d : kSafetensorsDTypes) {
    if (name == d.name) return d.size;
  }
  return std::nullopt;
}

const char* safetensors_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I32:
      return "I32";
    case DType::U8:
      return "U8";
    case DType::I64:
      return "I64";
  }
  return "?";
}

std::optional<DType> tensor_dtype(const std::string& name) {
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8}) {
    if (name == safetensors_name(dtype)) return dtype;
  }
  return std::nullopt;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::Io, fmt::format("{}: {}", path, what));
}

// a * b, or nullopt on overflow.
std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::nullopt;
  return a * b;
}

std::uint64_t json_size(const Json& value, const std::string& path, const std::string& what) {
  if (!value.is_number_unsigned()) {
    fail(path, fmt::format("{} is not a non-negative integer", what));
  }
  return value.get<std::uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const Json& value,
                             std::uint64_t data_size) {
  if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets")) {
    fail(path, fmt::format("tensor '{}' needs dtype, shape and data_offsets", name));
  }
  const Json& dtype = value["dtype"];
  const Json& shape = value["shape"];
  const Json& offsets = value["data_offsets"];
  if (!dtype.is_string()) fail(path, fmt::format("tensor '{}': dtype is not a string", name));
  SafetensorsEntry entry;
  entry.dtype = dtype.get<std::string>();
  const std::optional<std::size_t> element_size = safetensors_dtype_size(entry.dtype);
  if (!element_size) fail(path, fmt::format("tensor '{}': unknown dtype '{}'", name, entry.dtype));
  if (!shape.is_array()) fail(path, fmt::format("tensor '{}': shape is not an array", name));
  std::uint64_t expected = *element_size;
  for (const Json& dim : shape) {
    const std::uint64_t d = json_size(dim, path, fmt::format("tensor '{}': a shape entry", name));
    const std::optional<std::uint64_t> product = checked_mul(expected, d);
    if (!product || d > std::numeric_limits<std::size_t>::max()) {
      fail(path, fmt::format("tensor '{}': shape {} overflows", name, shape.dump()));
    }
    expected = *product;
    entry.shape.push_back(static_cast<std::size_t>(d));
  }
  if (!offsets.is_array() || offsets.size() != 2) {
    fail(path, fmt::format("tensor '{}': data_offsets is not [begin, end]", name));
  }
  const std::uint64_t begin = json_size(offsets[0], path, fmt::format("tensor '{}': begin offset", name));
  const std::uint64_t end = json_size(offsets[1], path, fmt::format("tensor '{}': end offset", name));
  if (begin > end || end > data_size) {
    fail(path,
         fmt::format("tensor '{}': offsets [{}, {}] out of range (data holds {} bytes)", name, begin, end, data_size));
  }
  if (end - begin != expected) {
    fail(path, fmt::format("tensor '{}': {} bytes for shape {} of {} (needs {})", name, end - begin, shape.dump(),
                           entry.dtype, expected));
  }
  entry.begin = static_cast<std::size_t>(begin);
  entry.end = static_cast<std::size_t>(end);
  return entry;
}

}  // namespace

SafetensorsReader::SafetensorsReader(std::string path) : path_(std::move(path)) {
  std::ifstream file(path_, std::ios::binary | std::ios::ate);
  if (!file) fail(path_, "cannot open");
  const std::streamoff file_size = file.tellg();
  if (file_size < 8) {
    fail(path_, fmt::format("truncated: {} bytes, a safetensors file starts with an 8-byte header length",
                            file_size < 0 ? 0 : file_size));
  }
  file.seekg(0);
  std::array<unsigned char, 8> length_bytes{};
  file.read(reinterpret_cast<char*>(length_bytes.data()), 8);
  std::uint64_t header_length = 0;
  for (std::size_t i = 0; i < 8; ++i) header_length |= std::uint64_t{length_bytes[i]} << (8 * i);
  const auto available = static_cast<std::uint64_t>(file_size) - 8;
  if (header_length > kMaxHeaderBytes) {
    fail(path_, fmt::format("header length {} exceeds the {}-byte limit", header_length, kMaxHeaderBytes));
  }
  if (header_length > available) {
    fail(path_, fmt::format("truncated: header length {} but only {} bytes follow", header_length, available));
  }
  std::string header(static_cast<std::size_t>(header_length), '\0');
  file.read(header.data(), static_cast<std::streamsize>(header.size()));
  if (!file) fail(path_, "short read of the header");

  const Json json = Json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) fail(path_, "header is not a JSON object");
  data_start_ = 8 + header_length;
  const std::uint64_t data_size = available - header_length;
  for (const auto& [name, value] : json.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail(path_, "__metadata__ is not an object");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) fail(path_, fmt::format("metadata '{}' is not a string", key));
        metadata_.emplace(key, text.get<std::string>());
      }
      continue;
    }
    entries_.emplace(name, parse_entry(path_, name, value, data_size));
  }
}

const std::string* SafetensorsReader::metadata(const std::string& key) const noexcept {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

const SafetensorsEntry& SafetensorsReader::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, fmt::format("no tensor named '{}'", name));
  return it->second;
}

std::vector<std::byte> SafetensorsReader::read_bytes(const SafetensorsEntry& entry) const {
  std::ifstream file(path_, std::ios::binary);
  if (!file) fail(path_, "cannot open");
  std::vector<std::byte> bytes(entry.end - entry.begin);
  file.seekg(static_cast<std::streamoff>(data_start_ + entry.begin));
  file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!file) fail(path_, "short read: the file changed or was truncated after it was opened");
  return bytes;
}

Tensor SafetensorsReader::read(const std::string& name, Device device, Stream stream) const {
  const SafetensorsEntry& e = entry(name);
  const std::optional<DType> dtype = tensor_dtype(e.dtype);
  if (!dtype) {
    fail(path_, fmt::format("tensor '{}' has dtype {}; micache tensors hold F32, F16, BF16, I32 or U8", name, e.dtype));
  }
  const std::vector<std::byte> bytes = read_bytes(e);
  return Tensor::from_host_bytes(bytes, Shape(e.shape), *dtype, device, stream);
}

std::vector<std::int64_t> SafetensorsReader::read_i64(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (e.dtype != "I64") fail(path_, fmt::format("tensor '{}' has dtype {}, expected I64", name, e.dtype));
  const std::vector<std::byte> bytes = read_bytes(e);
  std::vector<std::int64_t> out(bytes.size() / sizeof(std::int64_t));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

void SafetensorsWriter::check_new_name(const std::string& name) const {
  if (name.empty() || name.starts_with("__")) {
    throw Error(ErrorCode::Config, fmt::format("safetensors: invalid tensor name '{}'", name));
  }
  for (const Pending& t : tensors_) {
    if (t.name == name) throw Error(ErrorCode::Config, fmt::format("safetensors: tensor '{}' added twice", name));
  }
}

void SafetensorsWriter::add(const std::string& name, const Tensor& tensor) {
  check_new_name(name);
  tensors_.push_back({name, safetensors_name(tensor.dtype()), tensor.dims(), tensor.to_host_bytes()});
}

void SafetensorsWriter::add_i64(const std::string& name, std::span<const std::int64_t> values, const Shape& shape) {
  check_new_name(name);
  if (values.size() != shape.numel()) {
    throw Error(ErrorCode::Shape, fmt::format("safetensors: {} values do not fill shape {} of tensor '{}'",
                                              values.size(), shape.to_string(), name));
  }
  std::vector<std::byte> bytes(values.size_bytes());
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  tensors_.push_back({name, "I64", shape.dims(), std::move(bytes)});
}

void SafetensorsWriter::set_metadata(const std::string& key, std::string value) { metadata_[key] = std::move(value); }

void SafetensorsWriter::write(const std::string& path) const {
  Json header = Json::object();
  std::size_t offset = 0;
  for (const Pending& t : tensors_) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file) fail(temporary, "cannot open for writing");
    std::array<char, 8> length{};
    for (std::size_t i = 0; i < 8; ++i) length[i] = static_cast<char>((std::uint64_t{text.size()} >> (8 * i)) & 0xff);
    file.write(length.data(), 8);
    file.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const Pending& t : tensors_) {
      file.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    }
    file.flush();
    if (!file) {
      std::remove(temporary.c_str());
      fail(temporary, "write failed");
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    fail(path, "cannot replace the file");
  }
}

}  // namespace micache
