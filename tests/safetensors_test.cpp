// The safetensors reader and writer: round trips, the file layout the Python
// package expects, and an Io error (never a crash or a huge allocation) for
// every malformed file.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "file_support.hpp"
#include "micache/micache.hpp"
#include "test_support.hpp"

namespace micache {
namespace {

using testing::read_file;
using testing::ScratchDir;
using testing::write_file;

// A file from a header text and data bytes, with the 8-byte little-endian length prefix.
std::vector<char> file_bytes(const std::string& header, std::size_t data_bytes = 0, std::uint64_t claimed_length = 0) {
  const std::uint64_t length = claimed_length != 0 ? claimed_length : header.size();
  std::string out(8, '\0');
  for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out += header;
  out.append(data_bytes, '\x01');
  return {out.begin(), out.end()};
}

// Expects opening `bytes` as a file, then reading every tensor, to fail with Io mentioning `what`.
void expect_io_error(const std::vector<char>& bytes, const std::string& what) {
  ScratchDir dir;
  const std::string path = dir.path("bad.safetensors");
  write_file(path, bytes);
  try {
    const SafetensorsReader file(path);
    for (const std::string& name : file.names()) (void)file.read(name);
    FAIL() << "no error; expected Io with '" << what << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(Safetensors, EveryDTypeRoundTripsWithMetadata) {
  ScratchDir dir;
  const std::vector<float> values = testing::random_values(24, 1, -3.0f, 3.0f);
  SafetensorsWriter writer;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    writer.add(dtype_name(dtype), Tensor::from_host(values, {2, 3, 4}, dtype));
  }
  writer.add("i32", Tensor::from_host_i32(std::vector<std::int32_t>{-1, 0, 7, 1 << 30}, {4}));
  const std::vector<std::byte> codes{std::byte{0}, std::byte{255}, std::byte{17}};
  writer.add("u8", Tensor::from_host_bytes(codes, {3}, DType::U8));
  const std::vector<std::int64_t> positions{0, 5, std::int64_t{1} << 40};
  writer.add_i64("positions", positions, Shape{3});
  writer.set_metadata("model", "test");
  writer.write(dir.path("all.safetensors"));

  const SafetensorsReader file(dir.path("all.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"bf16", "f16", "f32", "i32", "positions", "u8"}));
  ASSERT_NE(file.metadata("model"), nullptr);
  EXPECT_EQ(*file.metadata("model"), "test");
  EXPECT_EQ(file.metadata("absent"), nullptr);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const Tensor t = file.read(dtype_name(dtype));
    EXPECT_EQ(t.dtype(), dtype);
    EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
    testing::expect_same_bits(t.to_host_f32(), testing::rounded_to(values, dtype));
  }
  EXPECT_EQ(file.read("i32").to_host_i32(), (std::vector<std::int32_t>{-1, 0, 7, 1 << 30}));
  EXPECT_EQ(file.read("u8").to_host_bytes(), codes);
  EXPECT_EQ(file.read_i64("positions"), positions);
  EXPECT_EQ(file.entry("positions").dtype, "I64");
}

TEST(Safetensors, HeaderIsPaddedToEightBytesAndDataIsBackToBackInAddOrder) {
  ScratchDir dir;
  SafetensorsWriter writer;
  writer.add("z_first", Tensor::from_host(std::vector<float>{1, 2, 3}, {3}, DType::F32));
  writer.add("a_second", Tensor::from_host(std::vector<float>{4, 5}, {2}, DType::BF16));
  writer.write(dir.path("layout.safetensors"));

  const std::vector<char> bytes = read_file(dir.path("layout.safetensors"));
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_length + 3 * 4 + 2 * 2);
  const SafetensorsReader file(dir.path("layout.safetensors"));
  EXPECT_EQ(file.entry("z_first").begin, 0u);
  EXPECT_EQ(file.entry("z_first").end, 12u);
  EXPECT_EQ(file.entry("a_second").begin, 12u);
  EXPECT_EQ(file.entry("a_second").end, 16u);
}

TEST(Safetensors, EmptyTensorRoundTrips) {
  ScratchDir dir;
  SafetensorsWriter writer;
  writer.add("empty", Tensor::empty({0, 5}, DType::F32));
  writer.write(dir.path("empty.safetensors"));
  const Tensor t = SafetensorsReader(dir.path("empty.safetensors")).read("empty");
  EXPECT_EQ(t.shape(), (Shape{0, 5}));
}

TEST(Safetensors, AddRejectsDuplicateReservedAndEmptyNames) {
  SafetensorsWriter writer;
  const Tensor t = Tensor::from_host(std::vector<float>{1}, {1}, DType::F32);
  writer.add("x", t);
  for (const std::string name : {"x", "__metadata__", ""}) {
    try {
      writer.add(name, t);
      FAIL() << "accepted '" << name << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Config);
    }
  }
}

TEST(Safetensors, FailedWriteLeavesTheEarlierFile) {
  ScratchDir dir;
  const std::string path = dir.path("keep.safetensors");
  SafetensorsWriter first;
  first.add("x", Tensor::from_host(std::vector<float>{1, 2}, {2}, DType::F32));
  first.write(path);
  const std::vector<char> before = read_file(path);
  std::filesystem::create_directory(path + ".tmp");  // the temporary file cannot be created

  SafetensorsWriter second;
  second.add("y", Tensor::from_host(std::vector<float>{3}, {1}, DType::F32));
  try {
    second.write(path);
    FAIL() << "write succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io);
  }
  EXPECT_EQ(read_file(path), before);
}

TEST(Safetensors, MissingFileIsAnIoError) {
  try {
    SafetensorsReader file("/nonexistent/micache.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io);
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos);
  }
}

TEST(SafetensorsMalformed, EmptyFile) { expect_io_error({}, "truncated: 0 bytes"); }

TEST(SafetensorsMalformed, ShorterThanTheLengthPrefix) { expect_io_error({'\x10', 0, 0}, "truncated: 3 bytes"); }

TEST(SafetensorsMalformed, HeaderLengthBeyondTheFile) {
  expect_io_error(file_bytes("{}", 0, 4096), "header length 4096 but only 2 bytes follow");
}

TEST(SafetensorsMalformed, HugeHeaderLengthIsRejectedBeforeAnyAllocation) {
  expect_io_error(file_bytes("{}", 0, std::numeric_limits<std::uint64_t>::max()), "exceeds the 104857600-byte limit");
}

TEST(SafetensorsMalformed, HeaderIsNotJson) { expect_io_error(file_bytes("{\"x\": [1, 2"), "not a JSON object"); }

TEST(SafetensorsMalformed, HeaderIsNotAnObject) { expect_io_error(file_bytes("[1, 2, 3]"), "not a JSON object"); }

TEST(SafetensorsMalformed, UnknownDType) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", 4),
                  "unknown dtype 'F33'");
}

TEST(SafetensorsMalformed, OffsetsOutOfRange) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
                  "offsets [0, 16] out of range (data holds 8 bytes)");
}

TEST(SafetensorsMalformed, BeginAfterEnd) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8),
                  "out of range");
}

TEST(SafetensorsMalformed, ByteCountDisagreesWithShape) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
                  "8 bytes for shape [3] of F32 (needs 12)");
}

TEST(SafetensorsMalformed, ShapeProductOverflows) {
  expect_io_error(
      file_bytes(R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})"),
      "overflows");
}

TEST(SafetensorsMalformed, NegativeDimension) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
                  "not a non-negative integer");
}

TEST(SafetensorsMalformed, MissingDataOffsets) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F32", "shape": [1]}})", 4), "needs dtype, shape and data_offsets");
}

TEST(SafetensorsMalformed, MetadataValueIsNotAString) {
  expect_io_error(file_bytes(R"({"__metadata__": {"n": 3}})"), "metadata 'n' is not a string");
}

TEST(SafetensorsMalformed, DTypeATensorCannotHold) {
  expect_io_error(file_bytes(R"({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8),
                  "has dtype F64");
}

TEST(SafetensorsMalformed, EveryTruncationOfAValidFileIsAnIoError) {
  ScratchDir dir;
  SafetensorsWriter writer;
  writer.add("a", Tensor::from_host(testing::random_values(6, 2), {2, 3}, DType::BF16));
  writer.add("b", Tensor::from_host(testing::random_values(5, 3), {5}, DType::F32));
  writer.set_metadata("k", "v");
  writer.write(dir.path("whole.safetensors"));
  const std::vector<char> whole = read_file(dir.path("whole.safetensors"));
  for (std::size_t n = 0; n < whole.size(); ++n) {
    SCOPED_TRACE(n);
    expect_io_error(std::vector<char>(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(n)), "");
  }
}

TEST(SafetensorsMalformed, FileTruncatedAfterOpeningFailsTheRead) {
  ScratchDir dir;
  const std::string path = dir.path("shrinks.safetensors");
  SafetensorsWriter writer;
  writer.add("a", Tensor::from_host(testing::random_values(64, 4), {64}, DType::F32));
  writer.write(path);
  const SafetensorsReader file(path);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 16);
  try {
    (void)file.read("a");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Io);
    EXPECT_NE(std::string(e.what()).find("short read"), std::string::npos);
  }
}

TEST(Safetensors, ReadsTheFixtureWrittenByPython) {
  const SafetensorsReader file(testing::test_data("minilm_s0.safetensors"));
  ASSERT_NE(file.metadata("tokens"), nullptr);
  EXPECT_EQ(file.metadata("tokens")->substr(0, 15), R"(["[CLS]","the",)");
  const Tensor pattern = file.read("blocks.0.attn.hook_pattern");
  EXPECT_EQ(pattern.dtype(), DType::F32);
  EXPECT_EQ(pattern.shape(), (Shape{1, 12, 14, 14}));
}

}  // namespace
}  // namespace micache
