// PagedKvCache's per-sequence trims and evictions: validate, ask the policy
// (eviction.hpp) which tokens to keep, plan the compaction page by page, move
// the tokens that need it on the device, commit.
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/eviction.hpp"
#include "micache/paged_kv_cache.hpp"
#include "src/caches/page_pool.hpp"
#include "src/caches/score_ranking.hpp"
#include "src/core/checks.hpp"

namespace micache {

// What one compaction does: the sequence's page lists after it (fresh pages
// as the pool will hand them out), the slots whose tokens move, and the
// slot counts that change (for the pool's token counter).
struct PagedKvCache::Compaction {
  std::vector<std::vector<std::int32_t>> pages;  // per group
  std::vector<std::vector<bool>> old_kept;       // per group, per old column: reused as is
  std::vector<std::int64_t> slots;               // source slots, then destination slots
  std::size_t moves = 0;
  std::size_t fresh_pages = 0;
  std::size_t tokens_added = 0;    // into fresh pages
  std::size_t tokens_dropped = 0;  // from reused pages that shrink
};

// Plans keeping `kept` of `s` packed from slot 0, group by group. New page
// k holds kept tokens [k * page_size, ...): when they are one old page's
// first tokens in order (all of its tokens, or fewer of an unshared unnamed
// page, whose stale slots nobody else reads), that page is kept as it is;
// when a window group holds none of them (it dropped them all), the column
// names the null page; otherwise the tokens it holds move into a fresh page.
// Host only; allocates, changes nothing. Error: Config when a window group
// dropped a kept token its window would attend after the compaction.
PagedKvCache::Compaction PagedKvCache::plan_compaction(SequenceId id, const Sequence& s, const KeptTokens& kept,
                                                       const char* operation) const {
  const std::size_t page_size = config_.page_size;
  const std::vector<std::size_t> index = kept.ranges().expand();
  const std::size_t length = index.size();
  const auto fill = [&](std::size_t page) { return std::min(page_size, s.length - page * page_size); };
  const std::size_t pages = (length + page_size - 1) / page_size;
  Compaction c;
  c.pages.resize(s.pages.size());
  c.old_kept.resize(s.pages.size());
  std::vector<std::size_t> destinations;  // per move: fresh page ordinal * page_size + offset
  for (std::size_t g = 0; g < s.pages.size(); ++g) {
    const std::vector<std::int32_t>& old = s.pages[g];
    const PagedLayerKind& kind = groups_.group_kinds[g];
    const auto held = [&](std::size_t t) { return old[t / page_size] != null_page_; };
    // The next step's first query is token `length`, or `length - 1` for a step that adds none.
    const auto attended = [&](std::size_t i) { return kind.is_full() || i < kind.sinks || i + kind.window >= length; };
    c.old_kept[g].assign(old.size(), false);
    for (std::size_t k = 0; k < pages; ++k) {
      const std::size_t first = k * page_size, count = std::min(page_size, length - first);
      bool any_held = false;
      for (std::size_t i = first; i < first + count; ++i) {
        if (held(index[i])) {
          any_held = true;
        } else if (attended(i)) {
          throw Error(ErrorCode::Config,
                      fmt::format("{}: sequence {}: layers of window {} dropped token {}, which would be in their "
                                  "window after it",
                                  operation, static_cast<std::uint64_t>(id), kind.window, index[i]));
        }
      }
      if (!any_held) {
        c.pages[g].push_back(null_page_);
        continue;
      }
      const std::size_t source = index[first] / page_size;
      const std::int32_t page = old[source];
      const bool in_order = index[first] % page_size == 0 && index[first + count - 1] == index[first] + count - 1;
      const bool whole = count == fill(source);
      const bool private_page = page != null_page_ && pool_->references(page) == 1 && !pool_->named(page);
      if (page != null_page_ && in_order && (whole || private_page)) {
        c.pages[g].push_back(page);
        c.old_kept[g][source] = true;
        c.tokens_dropped += fill(source) - count;
        continue;
      }
      c.pages[g].push_back(-1);  // filled with the pool's next page below
      c.tokens_added += count;
      for (std::size_t i = first; i < first + count; ++i) {
        const std::size_t t = index[i];
        if (!held(t)) continue;
        c.slots.push_back(
            static_cast<std::int64_t>(static_cast<std::size_t>(old[t / page_size]) * page_size + t % page_size));
        destinations.push_back(c.fresh_pages * page_size + (i - first));
      }
      ++c.fresh_pages;
    }
  }
  if (c.fresh_pages > pool_->available()) return c;  // the caller reports it
  std::vector<std::int32_t> fresh_ids;
  pool_->next_pages(c.fresh_pages, fresh_ids);
  c.moves = c.slots.size();
  for (const std::size_t d : destinations) {
    c.slots.push_back(
        static_cast<std::int64_t>(static_cast<std::size_t>(fresh_ids[d / page_size]) * page_size + d % page_size));
  }
  std::size_t next = 0;
  for (auto& group : c.pages) {
    for (std::int32_t& page : group) {
      if (page == -1) page = fresh_ids[next++];
    }
  }
  return c;
}

bool PagedKvCache::compact(SequenceId id, const KeptTokens& kept, const char* operation) {
  Sequence& s = sequence_or_throw(id, operation);
  if (kept.size() == s.length) return false;
  Compaction c = plan_compaction(id, s, kept, operation);
  if (c.fresh_pages > pool_->available()) {
    throw Error(
        ErrorCode::OutOfMemory,
        fmt::format("{}: sequence {} needs {} fresh pages to compact into, {} free and {} cached of {}", operation,
                    static_cast<std::uint64_t>(id), c.fresh_pages, pool_->free(), pool_->cached(), pool_->total()));
  }
  PositionRuns positions = s.positions.select(kept.ranges());
  if (c.moves > 0) {
    const Tensor slots = Tensor::from_host_i64(c.slots, {c.slots.size()}, device_, stream_);
    const auto* list = static_cast<const std::int64_t*>(slots.data());
    for (std::size_t slot = 0; slot < pages_.size(); ++slot) {
      backend_->paged_move(
          PagedMove{.pages = storage_layout(slot), .src_slots = list, .dst_slots = list + c.moves, .tokens = c.moves},
          stream_);
    }
  }
  // Commit: take the fresh pages before returning any (the moves read the old ones).
  for (std::size_t i = 0; i < c.fresh_pages; ++i) pool_->allocate();
  const std::size_t page_size = config_.page_size;
  std::size_t unchanged = c.pages.empty() ? 0 : c.pages[0].size();
  for (std::size_t g = 0; g < s.pages.size(); ++g) {
    const std::vector<std::int32_t>& old = s.pages[g];
    for (std::size_t j = old.size(); j-- > 0;) {
      if (!c.old_kept[g][j] && old[j] != null_page_ && pool_->release(old[j])) {
        tokens_ -= std::min(page_size, s.length - j * page_size);
      }
    }
    unchanged = std::min(
        unchanged,
        static_cast<std::size_t>(std::mismatch(c.pages[g].begin(), c.pages[g].end(), old.begin(), old.end()).first -
                                 c.pages[g].begin()));
  }
  tokens_ += c.tokens_added;
  tokens_ -= c.tokens_dropped;
  s.pages.swap(c.pages);
  s.positions = std::move(positions);
  s.length = kept.size();
  s.naming = false;
  s.tail_tokens.clear();
  upload_row(s, unchanged);
  ++step_;  // the current plan described the old pages
  return true;
}

bool PagedKvCache::trim_to(SequenceId id, std::size_t max_tokens) {
  const Sequence& s = sequence_or_throw(id, "trim_to");
  return compact(id, eviction::last(s.length, max_tokens), "trim_to");
}

bool PagedKvCache::evict_to_window(SequenceId id, std::size_t sinks, std::size_t window) {
  const Sequence& s = sequence_or_throw(id, "evict_to_window");
  return compact(id, eviction::sinks_and_window(s.length, sinks, window), "evict_to_window");
}

bool PagedKvCache::evict_heavy_hitters(SequenceId id, const Tensor& scores, std::size_t heavy, std::size_t window) {
  const std::size_t length = sequence_or_throw(id, "evict_heavy_hitters").length;
  detail::require_defined(scores, "evict_heavy_hitters: scores");
  if (scores.rank() != 1 || scores.dim(0) != length) {
    throw Error(ErrorCode::Shape,
                fmt::format("evict_heavy_hitters: scores must be [{}], got {}", length, scores.shape().to_string()));
  }
  detail::require_float_dtype(scores.dtype(), "evict_heavy_hitters: scores");
  if (!eviction::heavy_hitters_evict(length, heavy, window)) return false;
  detail::require_device(scores.device(), device_, "evict_heavy_hitters: scores");
  if (length > static_cast<std::size_t>(INT32_MAX)) {
    throw Error(ErrorCode::Shape, fmt::format("evict_heavy_hitters: {} tokens exceed the int32 index range", length));
  }
  const std::vector<std::int32_t> chosen = detail::top_scored(scores, length - window, heavy, stream_).front();
  return compact(id, eviction::heavy_hitters(length, heavy, window, chosen), "evict_heavy_hitters");
}

}  // namespace micache
