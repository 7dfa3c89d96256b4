#include <algorithm>
#include <cstring>

#include "cpu/cpu_backend.hpp"

namespace micache {
namespace {

// One buffer pair. Memory access: per plane, a contiguous copy is split where
// either ring wraps, so each piece is one memcpy of consecutive slots; a
// gather copies token by token. Every kept byte moves once.
void copy_buffer(const TokenCopy& copy, const std::byte* src, std::byte* dst) {
  for (std::size_t p = 0; p < copy.planes; ++p) {
    const std::byte* src_plane = src + p * copy.src_capacity * copy.token_bytes;
    std::byte* dst_plane = dst + p * copy.dst_capacity * copy.token_bytes;
    std::size_t t = 0;
    while (t < copy.tokens) {
      const std::size_t logical = copy.src_tokens != nullptr ? static_cast<std::size_t>(copy.src_tokens[t]) : t;
      const std::size_t s = (copy.src_start + logical) % copy.src_capacity;
      const std::size_t d = (copy.dst_start + t) % copy.dst_capacity;
      const std::size_t run =
          copy.src_tokens != nullptr ? 1 : std::min({copy.tokens - t, copy.src_capacity - s, copy.dst_capacity - d});
      std::memcpy(dst_plane + d * copy.token_bytes, src_plane + s * copy.token_bytes, run * copy.token_bytes);
      t += run;
    }
  }
}

}  // namespace

void CpuBackend::copy_tokens(const TokenCopy& copy, Stream stream) {
  require_live(stream);
  for (std::size_t b = 0; b < copy.buffers; ++b) {
    copy_buffer(copy, static_cast<const std::byte*>(copy.src[b]), static_cast<std::byte*>(copy.dst[b]));
  }
}

}  // namespace micache
