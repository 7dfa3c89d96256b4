// The reference decode attention over paged KV storage: one query token per
// request, FlashInfer's paged metadata (kv_indptr, kv_indices,
// kv_last_page_len) and GQA, in one fixed order every backend follows.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/backend/paged_kv.hpp"
#include "micache/host_device.hpp"

namespace micache {

/// Largest head_dim `Backend::paged_decode_attention` accepts: CUDA keeps a
/// query head in shared memory as f32 (16 KiB at 4096) beside the scores of
/// one chunk of kPagedAttentionChunkTokens tokens (1 KiB), within 48 KiB.
inline constexpr std::size_t kPagedAttentionMaxHeadDim = 4096;

/// Tokens whose scores one CUDA block holds at a time; the order of every
/// sum is the token order whatever the chunk.
inline constexpr std::size_t kPagedAttentionChunkTokens = 256;

/// The tokens one request attends, in token order: [0, sinks_end) then
/// [window_begin, T); `count` of them.
struct AttendedTokens {
  std::size_t sinks_end = 0;
  std::size_t window_begin = 0;
  std::size_t count = 0;

  /// The u-th token attended (u < count).
  MICACHE_HOST_DEVICE constexpr std::size_t token(std::size_t u) const noexcept {
    return u < sinks_end ? u : window_begin + (u - sinks_end);
  }
};

/// Decode attention of `batch` requests over their pages (FlashInfer's
/// BatchDecodeWithPagedKVCacheWrapper.run, no mask, no soft cap):
/// - request i's keys and values are the pages `kv_indices[kv_indptr[i] ..
///   kv_indptr[i + 1])` (int32, on the device) in token order; its length is
///   `(pages - 1) * page_size + kv_last_page_len[i]` (last_page_len in
///   1..page_size), 0 when it has no pages;
/// - `queries`: query head q of request i is `head_dim` elements of the
///   pages' dtype at `queries[i * query_stride + q * head_dim]` (a packed
///   `[batch, qo_heads, head_dim]` tensor has query_stride = qo_heads *
///   head_dim); qo_heads is a multiple of kv_heads and query head q reads kv
///   head `q / (qo_heads / kv_heads)` (GQA; MHA when equal);
/// - the tokens attended: all T of the request, or with `window` w > 0 the
///   tokens t >= T - w or t < `sinks` (a sliding-window layer, its query
///   being token T - 1: FlashInfer's window_left = w - 1); the others are
///   not read;
/// - `out` F32 `[batch, qo_heads, head_dim]`, packed: softmax over the
///   attended tokens t of `scale * <q, k_t>`, times v_t; `lse`, when not
///   null, F32 `[batch, qo_heads]`: the natural log of the sum over t of
///   e^(scale * <q, k_t>) (torch.logsumexp; FlashInfer's return_lse is this
///   times log2(e), base 2). An empty request writes zeros and lse -inf.
///
/// The order, on every backend: score_t = mul_rn(warp_order_dot(q, k_t),
/// scale) over head_dim elements loaded as f32 (detail/qjl_projection.hpp);
/// m = the largest score, in token order; w_t = exp_f32(score_t - m); sum =
/// the w_t added in token order; out_d = div_rn(sum over t in token order of
/// mul_rn(w_t, v_t,d), sum); lse = add_rn(m, log(sum)). Every operation is
/// rounded once, so backends differ only by exp and log (an ulp or two).
/// Bytes read: per query head, 2 * head_dim * dtype size per token for the
/// keys (read twice: once for the max, once for the weights) and head_dim *
/// dtype size for the values, + 4 per page.
struct PagedDecodeAttention {
  PagedPages pages;
  const void* queries = nullptr;
  std::size_t query_stride = 0;  ///< elements between consecutive requests' queries
  std::size_t batch = 0;
  std::size_t qo_heads = 0;  ///< a multiple of pages.kv_heads
  const std::int32_t* kv_indptr = nullptr;
  const std::int32_t* kv_indices = nullptr;
  const std::int32_t* kv_last_page_len = nullptr;
  float scale = 1.0f;    ///< applied to every score (1/sqrt(head_dim) by default, the caller's choice)
  std::size_t window = 0;  ///< 0: every token; else the last `window` tokens (and the first `sinks`)
  std::size_t sinks = 0;
  float* out = nullptr;  ///< `[batch, qo_heads, head_dim]`
  float* lse = nullptr;  ///< `[batch, qo_heads]`, or null

  /// Query heads per kv head.
  MICACHE_HOST_DEVICE constexpr std::size_t group_size() const noexcept { return qo_heads / pages.kv_heads; }
  /// Tokens of request i, from its page count and last page length.
  MICACHE_HOST_DEVICE std::size_t tokens(std::size_t i) const noexcept {
    const auto pages_of = static_cast<std::size_t>(kv_indptr[i + 1] - kv_indptr[i]);
    return pages_of == 0 ? 0 : (pages_of - 1) * pages.page_size + static_cast<std::size_t>(kv_last_page_len[i]);
  }
  /// The tokens request i attends, in token order.
  MICACHE_HOST_DEVICE AttendedTokens attended(std::size_t i) const noexcept {
    const std::size_t total = tokens(i);
    const std::size_t begin = window == 0 || total <= window ? 0 : total - window;
    const std::size_t sinks_end = sinks < begin ? sinks : begin;
    return AttendedTokens{sinks_end, begin, sinks_end + total - begin};
  }
  /// Element index of element 0 of kv head `head`'s key (kind 0) or value (1)
  /// of token t of request i.
  MICACHE_HOST_DEVICE std::size_t row(std::size_t i, std::size_t t, std::size_t kind, std::size_t head) const noexcept {
    const auto page =
        static_cast<std::size_t>(kv_indices[static_cast<std::size_t>(kv_indptr[i]) + t / pages.page_size]);
    return pages.element(page, kind, t % pages.page_size, head, 0);
  }
};

}  // namespace micache
