// Private: the hash chain that names a full page of a PagedKvCache by its content (vLLM's block hash).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace micache::detail {

/// A full page's name: XXH3-128 of (its parent page's hash, the salt, its
/// token ids). 128 bits, so that two different prefixes share a name with
/// probability about n^2 / 2^129 for n pages ever hashed (below 10^-26 for
/// 10^6 pages); the cache trusts the name and does not compare token ids.
struct PageHash {
  std::uint64_t low = 0;
  std::uint64_t high = 0;

  friend bool operator==(const PageHash&, const PageHash&) = default;
};

/// The hash of the page holding `tokens` then `more` (page_size token ids
/// in all, split where they come from two buffers) after the page named
/// `parent` (a zero PageHash for a sequence's first page), with `salt` (a
/// LoRA or tenant id; 0 for none) in every link, so sequences of different
/// salts never share a page. The split does not change the hash.
/// O(tokens); allocates nothing.
PageHash hash_page(const PageHash& parent, std::uint64_t salt, std::span<const std::int32_t> tokens,
                   std::span<const std::int32_t> more = {}) noexcept;

}  // namespace micache::detail
