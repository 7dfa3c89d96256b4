// Fuzz target: the safetensors reader and every cache's `load`, on arbitrary file bytes.
//
// Each input is written to a file in a per-process directory ($TMPDIR, else /dev/shm when writable, else /tmp).
// - SafetensorsReader either opens it or throws Error(Io). When it opens, every entry's byte range matches its
//   shape and dtype; `read` gives the entry's dtype, shape and exact bytes for F32, F16, BF16, I32 and U8 and Io
//   for any other dtype; `read_i64` gives an I64 entry's values and Io for any other dtype; a missing name is Io.
// - Every load either succeeds or throws an Error with code Io, or with a code its own validation documents for
//   tensors a well-formed file can hold:
//     AttentionCache       Shape (push: rank not 4, a zero dimension, layers of different shapes);
//     ActivationCache      none (a non-float tensor is Io);
//     FullActivationCache  Shape (rank not 2, layers of different shapes), Config (layers of different dtypes);
//     KVCache              Shape, Config (set_layer: rank, keys vs values, layers of other geometry or dtype);
//     compressed caches    none (config, head counts and record sizes are all reported as Io).
//   Any other code (OutOfMemory, Hook, ...), another exception type, a crash, a leak or a timeout is a finding.
// - A cache that loads saves, reloads to the same tensors (dtype, shape and bytes; KV positions; compressed
//   config, records and settings), and the reloaded cache saves the same file bytes again.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "fuzz/fuzz_support.hpp"
#include "micache/micache.hpp"

namespace micache::fuzz {
namespace {

// This process's scratch directory, removed at exit: under $TMPDIR when set (scripts/fuzz.sh points it at a
// directory it removes, which also catches what a crashed run leaves), else /dev/shm when writable, else /tmp.
struct ScratchDir {
  std::filesystem::path path;

  ScratchDir() {
    const char* tmpdir = std::getenv("TMPDIR");
    const std::string base = tmpdir != nullptr && *tmpdir != '\0' ? tmpdir
                             : access("/dev/shm", W_OK) == 0      ? "/dev/shm"
                                                                  : "/tmp";
    std::string name = base + "/micache-fuzz-XXXXXX";
    check(mkdtemp(name.data()) != nullptr, "cannot create a directory under {}", base);
    path = name;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

std::string path_of(const char* name) {
  static const ScratchDir dir;
  return (dir.path / name).string();
}

std::string file_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), {});
}

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  check(static_cast<bool>(file), "cannot write {}", path);
}

std::string bytes_of(const Tensor& t) {
  const std::vector<std::byte> bytes = t.to_host_bytes();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void check_same_tensor(const Tensor& a, const Tensor& b, const std::string& what) {
  check(a.defined() == b.defined(), "{}: defined {} after reload, {} before", what, b.defined(), a.defined());
  if (!a.defined()) return;
  check(a.dtype() == b.dtype() && a.shape() == b.shape(), "{}: {} {} after reload, {} {} before", what,
        dtype_name(b.dtype()), b.shape().to_string(), dtype_name(a.dtype()), a.shape().to_string());
  check(bytes_of(a) == bytes_of(b), "{}: bytes differ after reload", what);
}

// ---- the reader -------------------------------------------------------------------------------------------------

// The safetensors dtypes a micache Tensor holds.
std::optional<DType> tensor_dtype(const std::string& name) {
  constexpr std::pair<const char*, DType> kNames[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I32", DType::I32}, {"U8", DType::U8}};
  for (const auto& [spelling, dtype] : kNames) {
    if (name == spelling) return dtype;
  }
  return std::nullopt;
}

void check_reader(const std::string& path, const std::uint8_t* data, std::size_t size) {
  std::optional<SafetensorsReader> reader;
  allow(attempt("SafetensorsReader", [&] { reader.emplace(path); }), {ErrorCode::Io}, "SafetensorsReader");
  if (!reader) return;
  check(size >= 8, "a {}-byte file opened", size);
  std::uint64_t header_length = 0;
  for (std::size_t i = 0; i < 8; ++i) header_length |= std::uint64_t{data[i]} << (8 * i);
  check(header_length <= size - 8, "header length {} opened from a {}-byte file", header_length, size);
  const std::size_t data_start = 8 + static_cast<std::size_t>(header_length);
  const std::size_t data_size = size - data_start;

  for (const std::string& name : reader->names()) {
    const SafetensorsEntry& entry = reader->entry(name);
    check(entry.begin <= entry.end && entry.end <= data_size, "'{}': offsets [{}, {}] past {} data bytes", name,
          entry.begin, entry.end, data_size);
    const std::string expected(reinterpret_cast<const char*>(data) + data_start + entry.begin, entry.end - entry.begin);
    std::optional<Tensor> tensor;
    const std::optional<Error> read = attempt("read", [&] { tensor = reader->read(name); });
    if (const std::optional<DType> dtype = tensor_dtype(entry.dtype)) {
      expect(read, {}, "read");
      check(tensor->dtype() == *dtype && tensor->dims() == entry.shape && tensor->nbytes() == expected.size(),
            "'{}': read gave {} {} for {} {}", name, dtype_name(tensor->dtype()), tensor->shape().to_string(),
            entry.dtype, Shape(entry.shape).to_string());
      check(bytes_of(*tensor) == expected, "'{}': read gave other bytes than the file holds", name);
    } else {
      expect(read, {ErrorCode::Io}, "read of a dtype micache tensors do not hold");
    }
    std::vector<std::int64_t> values;
    const std::optional<Error> read_i64 = attempt("read_i64", [&] { values = reader->read_i64(name); });
    if (entry.dtype == "I64") {
      expect(read_i64, {}, "read_i64");
      check(values.size() * 8 == expected.size() &&
                std::string(reinterpret_cast<const char*>(values.data()), expected.size()) == expected,
            "'{}': read_i64 gave {} values for {} bytes", name, values.size(), expected.size());
    } else {
      expect(read_i64, {ErrorCode::Io}, "read_i64 of a non-I64 tensor");
    }
  }
  if (!reader->contains("no such tensor")) {
    expect(attempt("entry", [&] { reader->entry("no such tensor"); }), {ErrorCode::Io}, "entry of a missing name");
  }
}

// ---- cache loads ------------------------------------------------------------------------------------------------

template <class Cache>
void check_same_layers(const Cache& a, const Cache& b, const char* what) {
  check(a.n_layers() == b.n_layers(), "{}: {} layers after reload, {} before", what, b.n_layers(), a.n_layers());
  for (std::size_t i = 0; i < a.n_layers(); ++i) {
    check_same_tensor(*a.get_layer(i), *b.get_layer(i), fmt::format("{} layer {}", what, i));
  }
}

void check_same(const AttentionCache& a, const AttentionCache& b) { check_same_layers(a, b, "AttentionCache"); }
void check_same(const ActivationCache& a, const ActivationCache& b) { check_same_layers(a, b, "ActivationCache"); }
void check_same(const FullActivationCache& a, const FullActivationCache& b) {
  check_same_layers(a, b, "FullActivationCache");
}

void check_same(const KVCache& a, const KVCache& b) {
  check(a.n_layers() == b.n_layers(), "KVCache: {} layers after reload, {} before", b.n_layers(), a.n_layers());
  for (std::size_t i = 0; i < a.n_layers(); ++i) {
    check_same_tensor(a.keys(i), b.keys(i), fmt::format("KVCache keys {}", i));
    check_same_tensor(a.values(i), b.values(i), fmt::format("KVCache values {}", i));
    check(a.positions(i) == b.positions(i) && a.first_position(i) == b.first_position(i),
          "KVCache layer {}: positions differ after reload", i);
  }
}

void check_same(const CompressedHeads& a, const CompressedHeads& b, const char* what) {
  const KvCacheConfig& x = a.config();
  const KvCacheConfig& y = b.config();
  check(a.num_heads() == b.num_heads() && a.len() == b.len() && x.head_dim == y.head_dim && x.bits == y.bits &&
            x.projections == y.projections && x.seed == y.seed && x.value_bits == y.value_bits &&
            x.estimator == y.estimator,
        "{}: heads, length or config differ after reload", what);
  const auto [keys_a, values_a] = a.records();
  const auto [keys_b, values_b] = b.records();
  check_same_tensor(keys_a, keys_b, fmt::format("{} key records", what));
  check_same_tensor(values_a, values_b, fmt::format("{} value records", what));
}

void check_same(const KvCacheCompressor& a, const KvCacheCompressor& b) {
  check_same(a.heads(), b.heads(), "KvCacheCompressor");
}
void check_same(const MultiHeadKvCache& a, const MultiHeadKvCache& b) {
  check_same(a.heads(), b.heads(), "MultiHeadKvCache");
}
void check_same(const GqaKvCache& a, const GqaKvCache& b) {
  check(a.group_size() == b.group_size(), "GqaKvCache: group size differs after reload");
  check_same(a.heads(), b.heads(), "GqaKvCache");
}
void check_same(const SlidingWindowKvCache& a, const SlidingWindowKvCache& b) {
  check(a.window_size() == b.window_size() && a.total_tokens_seen() == b.total_tokens_seen() &&
            a.cache().group_size() == b.cache().group_size(),
        "SlidingWindowKvCache: settings differ after reload");
  check_same(a.cache().heads(), b.cache().heads(), "SlidingWindowKvCache");
}

// Loads the input as a `Cache`; when it loads, saves, reloads, compares and saves again.
template <class Cache>
void check_load(const std::string& input, Codes allowed, const char* what) {
  std::optional<Cache> loaded;
  allow(attempt(what, [&] { loaded.emplace(Cache::load(input)); }), allowed, what);
  if (!loaded) return;
  const std::string saved = path_of("saved.safetensors");
  const std::string resaved = path_of("resaved.safetensors");
  expect(attempt("save", [&] { loaded->save(saved); }), {}, what);
  std::optional<Cache> again;
  expect(attempt("reload", [&] { again.emplace(Cache::load(saved)); }), {}, what);
  check_same(*loaded, *again);
  expect(attempt("save again", [&] { again->save(resaved); }), {}, what);
  check(file_bytes(saved) == file_bytes(resaved), "{}: saving the reloaded cache wrote other bytes", what);
}

}  // namespace
}  // namespace micache::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace micache;
  using namespace micache::fuzz;
  const std::string input = path_of("input.safetensors");
  write_file(input, data, size);
  check_reader(input, data, size);
  check_load<AttentionCache>(input, {ErrorCode::Io, ErrorCode::Shape}, "AttentionCache::load");
  check_load<ActivationCache>(input, {ErrorCode::Io}, "ActivationCache::load");
  check_load<FullActivationCache>(input, {ErrorCode::Io, ErrorCode::Shape, ErrorCode::Config},
                                  "FullActivationCache::load");
  check_load<KVCache>(input, {ErrorCode::Io, ErrorCode::Shape, ErrorCode::Config}, "KVCache::load");
  check_load<KvCacheCompressor>(input, {ErrorCode::Io}, "KvCacheCompressor::load");
  check_load<MultiHeadKvCache>(input, {ErrorCode::Io}, "MultiHeadKvCache::load");
  check_load<GqaKvCache>(input, {ErrorCode::Io}, "GqaKvCache::load");
  check_load<SlidingWindowKvCache>(input, {ErrorCode::Io}, "SlidingWindowKvCache::load");
  return 0;
}
