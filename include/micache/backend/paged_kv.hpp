// Plain descriptions of paged KV storage (FlashInfer's single-tensor layout) and of the writes and gathers over it.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/dtype.hpp"

namespace micache {

/// The order of a page's axes. Both keep a page's keys and then its values
/// together: page p is one contiguous block of `2 * page_size * kv_heads *
/// head_dim` elements, so copying a page (copy on write) is one memcpy.
enum class PagedLayout : std::uint8_t {
  /// `[num_pages, 2, page_size, kv_heads, head_dim]`: vLLM's and FlashInfer's default.
  Nhd,
  /// `[num_pages, 2, kv_heads, page_size, head_dim]`: FlashInfer's HND, each head's tokens adjacent.
  Hnd,
};

/// One layer's pages: FlashInfer's single-tensor paged KV cache. Axis 1 is
/// 0 for keys and 1 for values. A slot is `page * page_size + offset`
/// (vLLM's slot number); offset < page_size.
struct PagedPages {
  void* data = nullptr;  ///< the layer's page tensor, `num_pages * page_elements()` elements of `dtype`
  DType dtype = DType::F32;
  PagedLayout layout = PagedLayout::Nhd;
  std::size_t num_pages = 0;
  std::size_t page_size = 0;  ///< tokens per page
  std::size_t kv_heads = 0;
  std::size_t head_dim = 0;

  /// Elements of one page (keys and values).
  MICACHE_HOST_DEVICE constexpr std::size_t page_elements() const noexcept {
    return 2 * page_size * kv_heads * head_dim;
  }
  /// Index of element `d` of head `head` of the token in slot offset `offset`
  /// of page `page`; `kind` is 0 for its key, 1 for its value.
  MICACHE_HOST_DEVICE constexpr std::size_t element(std::size_t page, std::size_t kind, std::size_t offset,
                                                    std::size_t head, std::size_t d) const noexcept {
    const std::size_t plane = page * 2 + kind;
    return layout == PagedLayout::Nhd ? ((plane * page_size + offset) * kv_heads + head) * head_dim + d
                                      : ((plane * kv_heads + head) * page_size + offset) * head_dim + d;
  }
};

/// Writes `tokens` new tokens' keys and values into their slots (vLLM's
/// reshape_and_cache, FlashInfer's append_paged_kv_cache). Token t's key for
/// head h is `keys[t * token_stride + h * head_dim + d]` (`values` alike; a
/// packed `[tokens, kv_heads, head_dim]` tensor has token_stride = kv_heads *
/// head_dim; a slice of a fused QKV projection has a larger one), in the
/// pages' dtype. It goes to slot `slot_mapping[t]` (int64, on the device); a
/// negative slot skips the token (vLLM's padding). Slots are distinct and
/// below num_pages * page_size. Bytes moved: 4 * tokens * kv_heads * head_dim
/// * dtype size, + 8 * tokens.
struct PagedWrite {
  PagedPages pages;
  const void* keys = nullptr;
  const void* values = nullptr;
  std::size_t token_stride = 0;  ///< elements between consecutive tokens of `keys` and of `values`
  std::size_t tokens = 0;
  const std::int64_t* slot_mapping = nullptr;
};

/// Gathers one sequence's `tokens` tokens from its pages into dense
/// `[kv_heads, tokens, head_dim]` keys and values (a KVCache layer's
/// `[1, kv_heads, seq_len, head_dim]`). Token t lives in page
/// `page_ids[t / page_size]` (int32, on the device, ceil(tokens / page_size)
/// entries) at offset t % page_size. Bytes moved: 4 * tokens * kv_heads *
/// head_dim * dtype size, + 4 per page.
struct PagedGather {
  PagedPages pages;
  const std::int32_t* page_ids = nullptr;
  std::size_t tokens = 0;
  void* keys = nullptr;
  void* values = nullptr;
};

}  // namespace micache
