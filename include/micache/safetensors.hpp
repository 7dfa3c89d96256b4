// Reading and writing safetensors files: the format of Hugging Face's
// `safetensors` package, which every cache's save/load uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "micache/tensor.hpp"

namespace micache {

/// A file's `__metadata__`: string keys to string values.
using SafetensorsMetadata = std::map<std::string, std::string>;

/// One tensor's header entry. `dtype` is safetensors' spelling ("F32", "BF16",
/// "I64", ...); `begin`/`end` are byte offsets into the data that follows the
/// header.
struct SafetensorsEntry {
  std::string dtype;
  std::vector<std::size_t> shape;
  std::size_t begin = 0;
  std::size_t end = 0;
};

/// A safetensors file opened for reading.
///
/// Layout: an 8-byte little-endian header length n, n bytes of JSON (an object
/// of name -> {dtype, shape, data_offsets} plus an optional `__metadata__`),
/// then the tensors' bytes. The constructor reads and validates the whole
/// header and nothing else; `read` then reads one tensor's bytes.
///
/// Validation, each failure an Io error naming the file and what is wrong
/// (never a crash, never an allocation of a size the file only claims): the
/// file holds at least 8 bytes; n is at most `kMaxHeaderBytes` and fits in the
/// file; the header is a JSON object; every entry has a known dtype, a shape
/// of non-negative integers and `[begin, end]` offsets with begin <= end <=
/// data size, and `end - begin` equals the shape's element count times the
/// dtype size (computed without overflow); metadata values are strings.
///
/// Thread safety: const members may run concurrently (each `read` opens the file).
class SafetensorsReader {
 public:
  /// The largest header accepted: 100 MiB, the Python package's own limit.
  static constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

  /// Opens `path` and validates its header. Error: Io.
  explicit SafetensorsReader(std::string path);

  const std::string& path() const noexcept { return path_; }
  const SafetensorsMetadata& metadata() const noexcept { return metadata_; }
  /// The metadata value of `key`, or nullptr when there is none.
  const std::string* metadata(const std::string& key) const noexcept;
  bool contains(const std::string& name) const noexcept { return entries_.count(name) != 0; }
  /// Every tensor name, sorted.
  std::vector<std::string> names() const;
  /// The header entry of `name`. Error: Io when the file has no such tensor.
  const SafetensorsEntry& entry(const std::string& name) const;

  /// Reads tensor `name` onto `device`, allocated on `stream`. The file's
  /// dtype must be one a Tensor holds (F32, F16, BF16, I32, U8). One read of
  /// the tensor's bytes, then one host-to-device copy. Errors: Io (missing
  /// name, other dtype, short read).
  Tensor read(const std::string& name, Device device = Device::cpu(), Stream stream = {}) const;

  /// Reads an I64 tensor (positions, token ids) as host integers. Error: Io.
  std::vector<std::int64_t> read_i64(const std::string& name) const;

 private:
  std::vector<std::byte> read_bytes(const SafetensorsEntry& entry) const;

  std::string path_;
  std::uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  SafetensorsMetadata metadata_;
};

/// Collects tensors and metadata, then writes one safetensors file.
///
/// Tensors are written in the order they were added, back to back (as the
/// Python package requires); the header is padded with spaces to a multiple of
/// 8 bytes. `add` copies the tensor's bytes to the host at once, so a device
/// tensor may be changed after it is added.
class SafetensorsWriter {
 public:
  /// Adds `tensor` (any dtype, any device) under `name`. Error: Config when the
  /// name is empty, starts with "__" or was added before.
  void add(const std::string& name, const Tensor& tensor);
  /// Adds host I64 values of `shape`. Errors: as `add`; Shape when the count is not the shape's.
  void add_i64(const std::string& name, std::span<const std::int64_t> values, const Shape& shape);
  void set_metadata(const std::string& key, std::string value);

  /// Writes the file: first to `path` + ".tmp", then renamed over `path`, so a
  /// failure leaves any earlier file at `path` as it was. Error: Io.
  void write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    std::string dtype;
    std::vector<std::size_t> shape;
    std::vector<std::byte> bytes;
  };
  void check_new_name(const std::string& name) const;

  std::vector<Pending> tensors_;
  SafetensorsMetadata metadata_;
};

}  // namespace micache
