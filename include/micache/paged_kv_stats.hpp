// PagedKvCache's counters: the pool, the prefix cache, one sequence, and the accounting kernel's device answer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/tensor.hpp"

namespace micache {

/// The pool's counters. Pages: used + cached + free = total; a used page is
/// held by one or more sequences, shared when by more than one; a cached
/// page is held by none but keeps its tokens for a later prompt with the same
/// prefix (the prefix cache); pages_total excludes the null page
/// (config.pool_pages()). Tokens: slots filled or reserved in used pages,
/// each page's once (a shared page's tokens once); with window layers a
/// token counts once per layer group whose pages hold it.
struct PagedPoolStats {
  std::size_t pages_total = 0;
  std::size_t pages_used = 0;
  std::size_t pages_cached = 0;
  std::size_t pages_free = 0;
  std::size_t pages_shared = 0;
  std::size_t tokens = 0;
  std::size_t bytes_total = 0;   ///< pages_total x page_bytes()
  std::size_t bytes_used = 0;    ///< pages_used x page_bytes()
  std::size_t bytes_cached = 0;  ///< pages_cached x page_bytes()
  std::size_t bytes_free = 0;    ///< pages_free x page_bytes()
};

/// The prefix cache's counters since construction (vLLM's prefix-cache
/// metrics): the hit rate is hit_tokens / lookup_tokens.
struct PrefixCacheStats {
  std::uint64_t lookup_tokens = 0;  ///< prompt tokens passed to add_sequence
  std::uint64_t hit_tokens = 0;     ///< of them, found in cached or used pages
  std::uint64_t hit_pages = 0;      ///< pages taken from the prefix cache by add_sequence
  std::uint64_t evictions = 0;      ///< cached pages handed out again, their content forgotten
  std::size_t named_pages = 0;      ///< pages that have a name now (used or cached)
};

/// One sequence's counters: its tokens, the pages it holds over every layer
/// group (shared ones included; a window layer's dropped ones not), their
/// bytes (pages x page_bytes()) and the empty slots of those pages (pages x
/// page_size - tokens with one group).
struct PagedSequenceStats {
  std::size_t tokens = 0;
  std::size_t pages = 0;
  std::size_t bytes = 0;
  std::size_t slack = 0;
};

/// The accounting kernel's answer (PagedKvCache::device_accounting): int64
/// device tensors, views of one buffer.
/// - `per_sequence` `[batch, 4]`: each asked sequence's (tokens, pages,
///   bytes, slack), as PagedSequenceStats;
/// - `pool` `[4]`: (pages used, pages shared, tokens, bytes used), as
///   PagedPoolStats' pages_used, pages_shared, tokens and bytes_used.
struct PagedDeviceAccounting {
  Tensor per_sequence;
  Tensor pool;
};

}  // namespace micache
