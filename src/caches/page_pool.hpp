// Private: PagedKvCache's host page pool (vLLM's block pool): a free list and a reference count per page.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace micache::detail {

/// Most pages a pool may have, and most entries of a step's metadata: page
/// ids and FlashInfer's indptr arrays are int32.
inline constexpr std::size_t kInt32Max = 0x7fffffff;

/// Which pages of a pool are free and how many sequences hold each used one.
/// Every operation is O(1) and none allocates after construction, so a cache
/// can plan a step with `peek`, do its fallible work, then commit with
/// `allocate` and `release` without any of them throwing.
class PagePool {
 public:
  /// `pages` free pages (at most 2^31 - 1: page ids are int32); they are
  /// handed out as 0, 1, 2, ... while none has been returned.
  explicit PagePool(std::size_t pages) : refs_(pages, 0) {
    free_.reserve(pages);
    for (std::size_t p = pages; p > 0; --p) free_.push_back(static_cast<std::int32_t>(p - 1));
  }

  std::size_t total() const noexcept { return refs_.size(); }
  std::size_t free() const noexcept { return free_.size(); }
  std::size_t used() const noexcept { return total() - free(); }
  /// Pages held by more than one sequence.
  std::size_t shared() const noexcept { return shared_; }
  /// Sequences holding `page` (0 when free).
  std::uint32_t references(std::int32_t page) const noexcept { return refs_[static_cast<std::size_t>(page)]; }

  /// The page the `i`-th next `allocate` returns (i < free()), left free.
  std::int32_t peek(std::size_t i) const noexcept { return free_[free_.size() - 1 - i]; }

  /// Takes the next free page, with one reference. Precondition: free() > 0.
  std::int32_t allocate() noexcept {
    const std::int32_t page = free_.back();
    free_.pop_back();
    refs_[static_cast<std::size_t>(page)] = 1;
    return page;
  }

  /// One more sequence holds used `page`.
  void retain(std::int32_t page) noexcept {
    if (++refs_[static_cast<std::size_t>(page)] == 2) ++shared_;
  }

  /// One sequence fewer holds used `page`; true when that was the last one
  /// (the page is free again).
  bool release(std::int32_t page) noexcept {
    const std::uint32_t left = --refs_[static_cast<std::size_t>(page)];
    if (left == 1) --shared_;
    if (left != 0) return false;
    free_.push_back(page);  // within the capacity reserved at construction
    return true;
  }

 private:
  std::vector<std::int32_t> free_;  // a stack: back() is the next page handed out
  std::vector<std::uint32_t> refs_;
  std::size_t shared_ = 0;
};

}  // namespace micache::detail
