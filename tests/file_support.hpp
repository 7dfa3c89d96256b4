// Helpers for tests that read and write files: scratch paths and the bundled fixture data.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "micache/safetensors.hpp"

namespace micache::testing {

/// A fresh path in a per-test scratch directory (removed with the object).
class ScratchDir {
 public:
  ScratchDir() {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    dir_ = std::filesystem::temp_directory_path() / ("micache_test_" + name);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~ScratchDir() { std::filesystem::remove_all(dir_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string path(const std::string& file) const { return (dir_ / file).string(); }

 private:
  std::filesystem::path dir_;
};

/// Path of a file in tests/data: $MICACHE_TEST_DATA_DIR when set, else the
/// source tree's tests/data (compiled in), else tests/data under the working
/// directory (a build carried to another machine, run from the repository root).
inline std::string test_data(const std::string& file) {
  if (const char* dir = std::getenv("MICACHE_TEST_DATA_DIR")) return std::string(dir) + "/" + file;
  const std::filesystem::path source = std::filesystem::path(MICACHE_TEST_DATA_DIR) / file;
  if (std::filesystem::exists(source)) return source.string();
  return "tests/data/" + file;
}

/// Path of a file of the source tree (README.md): $MICACHE_SOURCE_DIR when set, else the
/// source tree (compiled in), else the working directory (the repository root of a copy).
inline std::string source_file(const std::string& file) {
  if (const char* dir = std::getenv("MICACHE_SOURCE_DIR")) return std::string(dir) + "/" + file;
  const std::filesystem::path source = std::filesystem::path(MICACHE_SOURCE_DIR) / file;
  if (std::filesystem::exists(source)) return source.string();
  return file;
}

/// Every byte of `path`.
inline std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Copies the safetensors file `from` to `to` (tensors of the dtypes a Tensor
/// holds, and the metadata), with metadata `key` set to `value`.
inline void copy_with_metadata(const std::string& from, const std::string& to, const std::string& key,
                               const std::string& value) {
  const SafetensorsReader source(from);
  SafetensorsWriter copy;
  for (const std::string& name : source.names()) copy.add(name, source.read(name));
  for (const auto& [k, v] : source.metadata()) copy.set_metadata(k, v);
  copy.set_metadata(key, value);
  copy.write(to);
}

inline void write_file(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace micache::testing
