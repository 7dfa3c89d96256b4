// Private: PagedKvCache's host page pool (vLLM's block pool): a free list, reference counts, and the prefix cache of
// full pages named by their hash, kept least recently used first when no sequence holds them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "src/caches/page_hash.hpp"

namespace micache::detail {

/// Most pages a pool may have, and most entries of a step's metadata: page
/// ids and FlashInfer's indptr arrays are int32.
inline constexpr std::size_t kInt32Max = 0x7fffffff;

/// Every page is in exactly one state: used (held by one or more
/// sequences: its reference count), cached (held by none, but named by a
/// hash, so a later prompt with the same prefix takes it back), or free.
/// `allocate` takes a free page, else the least recently cached one (its
/// name is forgotten: an eviction).
///
/// Every operation is O(1) (a name lookup: expected O(1), open addressing
/// over twice as many slots as pages) and none allocates after
/// construction, so a cache can plan a step with `next_pages`, do its
/// fallible work, then commit with `allocate`, `retain`, `release` and
/// `name` without any of them throwing.
class PagePool {
 public:
  /// `pages` free pages (at most 2^31 - 1: page ids are int32); they are
  /// handed out as 0, 1, 2, ... while none has been returned.
  explicit PagePool(std::size_t pages);
  /// A pool in a given state (PagedKvCache::restore, which validates it
  /// first): `references` per page, the free stack (back() handed out
  /// first), the cached pages oldest first, `named[i]` named `hashes[i]`, and
  /// the evictions so far. Preconditions: every page in exactly one state
  /// (used: count > 0; cached: count 0, named; free: count 0, unnamed), the
  /// names distinct, hashes.size() == named.size(). O(pages).
  PagePool(std::vector<std::uint32_t> references, std::span<const std::int32_t> free_stack,
           std::span<const std::int32_t> cached, std::span<const std::int32_t> named,
           std::span<const PageHash> hashes, std::uint64_t evictions);

  std::size_t total() const noexcept { return refs_.size(); }
  std::size_t free() const noexcept { return free_.size(); }
  std::size_t cached() const noexcept { return cached_; }
  std::size_t used() const noexcept { return total() - free() - cached(); }
  /// Pages `allocate` can hand out: free and cached ones.
  std::size_t available() const noexcept { return free() + cached(); }
  /// Pages held by more than one sequence.
  std::size_t shared() const noexcept { return shared_; }
  /// Pages that have a name (used or cached).
  std::size_t names() const noexcept { return names_; }
  /// Cached pages `allocate` has taken (their names forgotten) since construction.
  std::uint64_t evictions() const noexcept { return evictions_; }
  /// Sequences holding `page` (0 when free or cached).
  std::uint32_t references(std::int32_t page) const noexcept { return refs_[index(page)]; }

  /// The pages the next `count` calls of `allocate` return, in order
  /// (count <= available()), into `out` (cleared first). O(count).
  void next_pages(std::size_t count, std::vector<std::int32_t>& out) const;

  /// Takes the next page (free, else the least recently cached, forgetting
  /// its name), with one reference. Precondition: available() > 0.
  std::int32_t allocate() noexcept;
  /// One more sequence holds `page`, used or cached (a cached page becomes used again).
  void retain(std::int32_t page) noexcept;
  /// One sequence fewer holds used `page`; true when that was the last one.
  /// The page is then cached (most recently) when it has a name, else free.
  bool release(std::int32_t page) noexcept;

  /// Names used `page` by its content. False, and nothing changes, when
  /// another page already has that name (the same tokens computed twice:
  /// the first keeps the name) or `page` already has one.
  bool name(std::int32_t page, const PageHash& hash) noexcept;
  /// The page named `hash` (used or cached), or -1.
  std::int32_t find(const PageHash& hash) const noexcept;
  /// Whether `page` has a name.
  bool named(std::int32_t page) const noexcept { return named_[index(page)] != 0; }
  /// The name of a named page.
  const PageHash& hash_of(std::int32_t page) const noexcept { return hashes_[index(page)]; }

 private:
  static std::size_t index(std::int32_t page) noexcept { return static_cast<std::size_t>(page); }
  std::size_t home(const PageHash& hash) const noexcept { return static_cast<std::size_t>(hash.low) & mask_; }
  std::size_t slot_of(std::int32_t page) const noexcept;
  void forget(std::int32_t page) noexcept;
  void unlink(std::int32_t page) noexcept;
  void push_newest(std::int32_t page) noexcept;

  std::vector<std::int32_t> free_;  // a stack: back() is the next free page handed out
  std::vector<std::uint32_t> refs_;
  std::size_t shared_ = 0;
  // Cached pages: a doubly linked list through older_/newer_, oldest_ first.
  std::vector<std::int32_t> older_, newer_;
  std::int32_t oldest_ = -1, newest_ = -1;
  std::size_t cached_ = 0;
  std::uint64_t evictions_ = 0;
  // Names: open addressing with linear probing; a slot holds a page id or -1.
  std::vector<PageHash> hashes_;
  std::vector<std::uint8_t> named_;
  std::vector<std::int32_t> slots_;
  std::size_t mask_ = 0;
  std::size_t names_ = 0;
};

}  // namespace micache::detail
