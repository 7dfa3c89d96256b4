// Plain description of a token copy between ring buffers, passed to backends.
// C++17: included by .cu files.
#pragma once

#include <cstddef>

namespace micache {

/// Copies `tokens` tokens of every plane between two ring buffers.
///
/// A buffer is `planes` planes of `capacity` token slots of `token_bytes`
/// bytes each (a KV layer `[batch, kv_heads, capacity, head_dim]` has
/// `planes = batch * kv_heads`, `token_bytes = head_dim * dtype size`). Token
/// `t` (0 <= t < tokens) of plane `p` goes from slot
/// `(src_start + t) % src_capacity` to slot `(dst_start + t) % dst_capacity`.
/// A dense tensor is a ring with `start = 0` and `capacity` = its length.
/// Source and destination must not overlap. Bytes moved: 2 * planes * tokens * token_bytes.
struct TokenCopy {
  const void* src = nullptr;
  std::size_t src_capacity = 0;
  std::size_t src_start = 0;
  void* dst = nullptr;
  std::size_t dst_capacity = 0;
  std::size_t dst_start = 0;
  std::size_t planes = 0;
  std::size_t tokens = 0;
  std::size_t token_bytes = 0;
};

}  // namespace micache
