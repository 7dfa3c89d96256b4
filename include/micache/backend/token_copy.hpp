// Plain description of a token copy between ring buffers, passed to backends.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace micache {

/// Most buffers one TokenCopy moves together (a KV layer's keys and values).
inline constexpr std::size_t kTokenCopyMaxBuffers = 2;

/// Copies `tokens` tokens of every plane of `buffers` buffer pairs between ring buffers.
///
/// A buffer is `planes` planes of `capacity` token slots of `token_bytes`
/// bytes each (a KV layer `[batch, kv_heads, capacity, head_dim]` has
/// `planes = batch * kv_heads`, `token_bytes = head_dim * dtype size`). For
/// each pair `b < buffers` (every pair has the same geometry), token `t`
/// (0 <= t < tokens) of plane `p` goes from slot `(src_start + s(t)) %
/// src_capacity` of `src[b]` to slot `(dst_start + t) % dst_capacity` of
/// `dst[b]`, where `s(t) = t`, or `src_tokens[t]` when `src_tokens` is set
/// (a gather: an int32 array of `tokens` logical indices on the backend's
/// device, each < src_capacity). A dense tensor is a ring with `start = 0`
/// and `capacity` = its length. Sources and destinations must not overlap.
/// Bytes moved: 2 * buffers * planes * tokens * token_bytes (+ 4 * tokens per
/// plane read of `src_tokens`, from cache).
struct TokenCopy {
  const void* src[kTokenCopyMaxBuffers] = {};
  void* dst[kTokenCopyMaxBuffers] = {};
  std::size_t buffers = 1;
  std::size_t src_capacity = 0;
  std::size_t src_start = 0;
  std::size_t dst_capacity = 0;
  std::size_t dst_start = 0;
  std::size_t planes = 0;
  std::size_t tokens = 0;
  std::size_t token_bytes = 0;
  const std::int32_t* src_tokens = nullptr;
};

}  // namespace micache
