#include "src/caches/page_pool.hpp"

#include <bit>
#include <utility>

namespace micache::detail {

PagePool::PagePool(std::size_t pages)
    : refs_(pages, 0),
      older_(pages, -1),
      newer_(pages, -1),
      hashes_(pages),
      named_(pages, 0),
      slots_(std::bit_ceil(2 * pages + 1), -1) {
  mask_ = slots_.size() - 1;
  free_.reserve(pages);
  for (std::size_t p = pages; p > 0; --p) free_.push_back(static_cast<std::int32_t>(p - 1));
}

PagePool::PagePool(std::vector<std::uint32_t> references, std::span<const std::int32_t> free_stack,
                   std::span<const std::int32_t> cached, std::span<const std::int32_t> named,
                   std::span<const PageHash> hashes, std::uint64_t evictions)
    : PagePool(references.size()) {
  free_.assign(free_stack.begin(), free_stack.end());  // within the capacity the delegated constructor reserved
  refs_ = std::move(references);
  for (const std::uint32_t refs : refs_) shared_ += refs > 1 ? 1 : 0;
  for (const std::int32_t page : cached) push_newest(page);
  for (std::size_t i = 0; i < named.size(); ++i) name(named[i], hashes[i]);
  evictions_ = evictions;
}

void PagePool::next_pages(std::size_t count, std::vector<std::int32_t>& out) const {
  out.clear();
  for (std::size_t i = 0; i < count && i < free_.size(); ++i) out.push_back(free_[free_.size() - 1 - i]);
  for (std::int32_t page = oldest_; out.size() < count; page = newer_[index(page)]) out.push_back(page);
}

std::int32_t PagePool::allocate() noexcept {
  std::int32_t page = 0;
  if (!free_.empty()) {
    page = free_.back();
    free_.pop_back();
  } else {
    page = oldest_;
    unlink(page);
    forget(page);
    ++evictions_;
  }
  refs_[index(page)] = 1;
  return page;
}

void PagePool::retain(std::int32_t page) noexcept {
  std::uint32_t& refs = refs_[index(page)];
  if (refs == 0) unlink(page);
  if (++refs == 2) ++shared_;
}

bool PagePool::release(std::int32_t page) noexcept {
  const std::uint32_t left = --refs_[index(page)];
  if (left == 1) --shared_;
  if (left != 0) return false;
  if (named(page)) {
    push_newest(page);
  } else {
    free_.push_back(page);  // within the capacity reserved at construction
  }
  return true;
}

bool PagePool::name(std::int32_t page, const PageHash& hash) noexcept {
  if (named(page)) return false;
  std::size_t slot = home(hash);
  for (; slots_[slot] >= 0; slot = (slot + 1) & mask_) {
    if (hashes_[index(slots_[slot])] == hash) return false;
  }
  slots_[slot] = page;
  hashes_[index(page)] = hash;
  named_[index(page)] = 1;
  ++names_;
  return true;
}

std::int32_t PagePool::find(const PageHash& hash) const noexcept {
  for (std::size_t slot = home(hash); slots_[slot] >= 0; slot = (slot + 1) & mask_) {
    if (hashes_[index(slots_[slot])] == hash) return slots_[slot];
  }
  return -1;
}

std::size_t PagePool::slot_of(std::int32_t page) const noexcept {
  std::size_t slot = home(hashes_[index(page)]);
  while (slots_[slot] != page) slot = (slot + 1) & mask_;
  return slot;
}

// Removes `page`'s name by backward-shift deletion: later entries of the
// probe run move up into the hole unless their home lies after it
// (cyclically), so every lookup still finds its entry without tombstones.
void PagePool::forget(std::int32_t page) noexcept {
  std::size_t hole = slot_of(page);
  for (std::size_t next = (hole + 1) & mask_; slots_[next] >= 0; next = (next + 1) & mask_) {
    const std::size_t want = home(hashes_[index(slots_[next])]);
    const bool stays = hole <= next ? (hole < want && want <= next) : (hole < want || want <= next);
    if (stays) continue;
    slots_[hole] = slots_[next];
    hole = next;
  }
  slots_[hole] = -1;
  named_[index(page)] = 0;
  --names_;
}

void PagePool::unlink(std::int32_t page) noexcept {
  const std::int32_t before = older_[index(page)], after = newer_[index(page)];
  (before >= 0 ? newer_[index(before)] : oldest_) = after;
  (after >= 0 ? older_[index(after)] : newest_) = before;
  older_[index(page)] = newer_[index(page)] = -1;
  --cached_;
}

void PagePool::push_newest(std::int32_t page) noexcept {
  older_[index(page)] = newest_;
  newer_[index(page)] = -1;
  (newest_ >= 0 ? newer_[index(newest_)] : oldest_) = page;
  newest_ = page;
  ++cached_;
}

}  // namespace micache::detail
