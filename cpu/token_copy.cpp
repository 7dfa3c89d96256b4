#include <algorithm>
#include <cstring>

#include "cpu/kernels.hpp"

namespace micache::cpu {

// Memory access: per plane, the copy is split where either ring wraps, so
// each piece is one memcpy of consecutive slots; every kept byte moves once.
void copy_tokens(const TokenCopy& copy) {
  const auto* src = static_cast<const std::byte*>(copy.src);
  auto* dst = static_cast<std::byte*>(copy.dst);
  for (std::size_t p = 0; p < copy.planes; ++p) {
    const std::byte* src_plane = src + p * copy.src_capacity * copy.token_bytes;
    std::byte* dst_plane = dst + p * copy.dst_capacity * copy.token_bytes;
    std::size_t t = 0;
    while (t < copy.tokens) {
      const std::size_t s = (copy.src_start + t) % copy.src_capacity;
      const std::size_t d = (copy.dst_start + t) % copy.dst_capacity;
      const std::size_t run = std::min({copy.tokens - t, copy.src_capacity - s, copy.dst_capacity - d});
      std::memcpy(dst_plane + d * copy.token_bytes, src_plane + s * copy.token_bytes, run * copy.token_bytes);
      t += run;
    }
  }
}

}  // namespace micache::cpu
