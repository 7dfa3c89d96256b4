#include "png_heatmap.hpp"

#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <fstream>

#include "colour_map.hpp"
#include "micache/error.hpp"

namespace micache::cli {
namespace {

void put_u32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

// A PNG chunk: length, type, data, CRC-32 of type and data.
void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, static_cast<std::uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  out += body;
  put_u32(out, static_cast<std::uint32_t>(
                   crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

}  // namespace

void write_heatmap_png(const std::string& path, const std::vector<float>& weights, std::size_t rows,
                       std::size_t cols, std::size_t cell) {
  const std::size_t width = cols * cell;
  const std::size_t height = rows * cell;
  // Raw scanlines: a filter byte (0, none) then RGB per pixel.
  std::string raw;
  raw.reserve(height * (1 + 3 * width));
  for (std::size_t y = 0; y < height; ++y) {
    raw.push_back('\0');
    for (std::size_t x = 0; x < width; ++x) {
      const Rgb c = viridis(std::sqrt(weights[(y / cell) * cols + x / cell]));
      raw.push_back(static_cast<char>(c.r));
      raw.push_back(static_cast<char>(c.g));
      raw.push_back(static_cast<char>(c.b));
    }
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size, reinterpret_cast<const Bytef*>(raw.data()),
                static_cast<uLong>(raw.size()), 9) != Z_OK) {
    throw Error(ErrorCode::Io, path + ": compression failed");
  }
  packed.resize(packed_size);

  std::string header;
  put_u32(header, static_cast<std::uint32_t>(width));
  put_u32(header, static_cast<std::uint32_t>(height));
  header += std::string{'\x08', '\x02', '\0', '\0', '\0'};  // 8 bits per channel, RGB, deflate, no filter, no interlace
  std::string png = "\x89PNG\r\n\x1a\n";
  put_chunk(png, "IHDR", header);
  put_chunk(png, "IDAT", packed);
  put_chunk(png, "IEND", "");
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(png.data(), static_cast<std::streamsize>(png.size()));
  if (!file) throw Error(ErrorCode::Io, path + ": cannot write");
}

}  // namespace micache::cli
