// PagedKvCache's state and its restore hook: the bookkeeping as plain host vectors, validated in full before a
// cache is rebuilt from it (the pool, the sequences, the device page tables' rows, the counters).
#include "micache/paged_kv_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/paged_kv_cache.hpp"
#include "src/caches/page_hash.hpp"
#include "src/caches/page_pool.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

[[noreturn]] void invalid(const std::string& what) { throw Error(ErrorCode::Config, "restore: " + what); }

enum class PageState : std::uint8_t { None, Free, Cached };

void check_page(std::int32_t page, std::size_t pages, const char* what) {
  if (page < 0 || static_cast<std::size_t>(page) >= pages) {
    invalid(fmt::format("{} {} out of range (pages={})", what, page, pages));
  }
}

// The free and cached lists and the names: each page in one state at most,
// free ones unnamed and unheld, cached ones named and unheld, names distinct;
// every unheld page free or cached.
void validate_pool(const PagedKvState& s, std::size_t pages) {
  if (s.references.size() != pages)
    invalid(fmt::format("{} reference counts for {} pages", s.references.size(), pages));
  std::vector<PageState> where(pages, PageState::None);
  const auto mark = [&](const std::vector<std::int32_t>& list, PageState state, const char* what) {
    for (const std::int32_t page : list) {
      check_page(page, pages, what);
      const auto p = static_cast<std::size_t>(page);
      if (where[p] != PageState::None)
        invalid(fmt::format("page {} is listed twice among the free and cached pages", page));
      where[p] = state;
      if (s.references[p] != 0) invalid(fmt::format("{} {} has reference count {}", what, page, s.references[p]));
    }
  };
  mark(s.free_pages, PageState::Free, "free page");
  mark(s.cached_pages, PageState::Cached, "cached page");
  std::vector<bool> named(pages, false);
  for (const PagedPageName& name : s.names) {
    check_page(name.page, pages, "named page");
    const auto p = static_cast<std::size_t>(name.page);
    if (named[p]) invalid(fmt::format("page {} is named twice", name.page));
    named[p] = true;
    if (where[p] == PageState::Free) invalid(fmt::format("free page {} has a name", name.page));
  }
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::int32_t>> by_name;
  by_name.reserve(s.names.size());
  for (const PagedPageName& name : s.names) by_name.emplace_back(name.low, name.high, name.page);
  std::sort(by_name.begin(), by_name.end());
  for (std::size_t i = 1; i < by_name.size(); ++i) {
    const auto& [low, high, page] = by_name[i];
    const auto& [low_before, high_before, page_before] = by_name[i - 1];
    if (low == low_before && high == high_before) {
      invalid(
          fmt::format("pages {} and {} have the same name", std::min(page, page_before), std::max(page, page_before)));
    }
  }
  for (const std::int32_t page : s.cached_pages) {
    if (!named[static_cast<std::size_t>(page)]) invalid(fmt::format("cached page {} has no name", page));
  }
  for (std::size_t p = 0; p < pages; ++p) {
    if (s.references[p] == 0 && where[p] == PageState::None) {
      invalid(fmt::format("page {} has reference count 0 and is neither free nor cached", p));
    }
  }
}

void validate_positions(const PagedSequenceState& q) {
  std::size_t count = 0, end = 0;
  for (std::size_t k = 0; k < q.positions.size(); ++k) {
    const PositionRuns::Run& run = q.positions[k];
    if (run.length == 0 || (k > 0 && run.begin <= end) || run.begin >= q.next_position ||
        run.length > q.next_position - run.begin) {
      invalid(
          fmt::format("sequence {}'s position runs must be non-empty, increase with gaps between them and stay "
                      "below next_position {}; run {} is (begin {}, length {})",
                      q.id, q.next_position, k, run.begin, run.length));
    }
    end = run.begin + run.length;
    count += run.length;  // at most next_position: the runs are disjoint and below it
  }
  if (count != q.length) {
    invalid(fmt::format("sequence {}'s position runs hold {} positions for {} tokens", q.id, count, q.length));
  }
}

// A window group's null columns (`null` in `pages`): one run starting at
// its first column past the sinks (what begin_step's search for the first
// held column relies on), each holding no token its window attends.
void validate_null_columns(const PagedKvConfig& c, const PagedSequenceState& q, const PagedLayerKind& kind,
                           std::span<const std::int32_t> pages, std::int32_t null) {
  const std::size_t sink_columns = (kind.sinks + c.page_size - 1) / c.page_size;
  for (std::size_t j = 0; j < pages.size(); ++j) {
    if (pages[j] != null) continue;
    const bool in_run = j == sink_columns || (j > sink_columns && pages[j - 1] == null);
    if (kind.is_full() || !in_run || (j + 1) * c.page_size + kind.window > q.length) {
      invalid(fmt::format(
          "sequence {} names the null page in column {}, {}", q.id, j,
          kind.is_full() ? "of a full-attention group" : "not in one run after its sinks or attended by its window"));
    }
  }
}

// One sequence: its id, row, length against its pages, its pages (counted
// into `holders`; `seen` marks the pages of sequence `mark`), positions and tail.
void validate_sequence(const PagedKvConfig& c, const PagedLayerGroups& groups, const PagedKvState& s, std::size_t i,
                       std::vector<bool>& rows, std::vector<std::uint64_t>& holders, std::vector<std::size_t>& seen) {
  const PagedSequenceState& q = s.sequences[i];
  if ((i > 0 && q.id <= s.sequences[i - 1].id) || q.id >= s.next_id) {
    invalid(fmt::format("sequence ids must increase and stay below next_id {}; entry {} is {}", s.next_id, i, q.id));
  }
  if (q.row >= c.max_sequences) {
    invalid(fmt::format("sequence {} has row {}, out of range (max_sequences={})", q.id, q.row, c.max_sequences));
  }
  if (rows[q.row]) invalid(fmt::format("row {} is held twice", q.row));
  rows[q.row] = true;
  if (q.length > c.sequence_len()) {
    invalid(fmt::format("sequence {} holds {} tokens, above max_sequence_len {}", q.id, q.length, c.sequence_len()));
  }
  const std::size_t pages = (q.length + c.page_size - 1) / c.page_size;
  if (q.pages.size() != pages * groups.groups()) {
    invalid(fmt::format("sequence {} of {} tokens holds {} pages, must hold {}{}", q.id, q.length, q.pages.size(),
                        pages * groups.groups(),
                        groups.groups() == 1
                            ? std::string()
                            : fmt::format(" ({} in each of {} layer groups)", pages, groups.groups())));
  }
  const auto null = static_cast<std::int32_t>(holders.size());  // the null page's id, with window layers
  if (groups.has_windows()) {
    for (std::size_t g = 0; g < groups.groups(); ++g) {
      validate_null_columns(c, q, groups.group_kinds[g], std::span(q.pages).subspan(g * pages, pages), null);
    }
  }
  for (const std::int32_t page : q.pages) {
    if (page == null && groups.has_windows()) continue;
    if (page < 0 || static_cast<std::size_t>(page) >= holders.size()) {
      invalid(fmt::format("sequence {} holds page {}, out of range (pages={})", q.id, page, holders.size()));
    }
    const auto p = static_cast<std::size_t>(page);
    if (seen[p] == i + 1) invalid(fmt::format("sequence {} holds page {} twice", q.id, page));
    seen[p] = i + 1;
    ++holders[p];
  }
  validate_positions(q);
  if (q.tail_tokens.size() >= c.page_size) {
    invalid(fmt::format("sequence {} has {} tail tokens, a page holds {}", q.id, q.tail_tokens.size(), c.page_size));
  }
  if (q.naming && q.tail_tokens.size() != q.length % c.page_size) {
    invalid(fmt::format("sequence {} names its pages and has {} tail tokens for the {} tokens of its last page", q.id,
                        q.tail_tokens.size(), q.length % c.page_size));
  }
}

// Everything restore relies on; the counts are checked before any list of
// their size is allocated, so a state cannot make validation allocate more
// than it holds.
void validate_state(const PagedKvConfig& c, const PagedKvState& s) {
  const std::size_t pages = c.pool_pages();
  const PagedLayerGroups groups = c.layer_groups();
  validate_pool(s, pages);
  if (s.sequences.size() + s.free_rows.size() != c.max_sequences) {
    invalid(fmt::format("{} sequences and {} free rows for max_sequences {}", s.sequences.size(), s.free_rows.size(),
                        c.max_sequences));
  }
  std::vector<bool> rows(c.max_sequences, false);
  std::vector<std::uint64_t> holders(pages, 0);
  std::vector<std::size_t> seen(pages, 0);
  for (std::size_t i = 0; i < s.sequences.size(); ++i) validate_sequence(c, groups, s, i, rows, holders, seen);
  for (std::size_t p = 0; p < pages; ++p) {
    if (holders[p] != s.references[p]) {
      invalid(fmt::format("page {} has reference count {}, held by {} sequences", p, s.references[p], holders[p]));
    }
  }
  for (const std::int32_t row : s.free_rows) {
    if (row < 0 || static_cast<std::size_t>(row) >= c.max_sequences) {
      invalid(fmt::format("free row {} out of range (max_sequences={})", row, c.max_sequences));
    }
    if (rows[static_cast<std::size_t>(row)]) invalid(fmt::format("row {} is held twice", row));
    rows[static_cast<std::size_t>(row)] = true;
  }
}

Shape stored_shape(const PagedKvConfig& c, std::size_t stored) {
  return c.layout == PagedLayout::Nhd ? Shape{stored, 2, c.page_size, c.kv_heads, c.head_dim}
                                      : Shape{stored, 2, c.kv_heads, c.page_size, c.head_dim};
}

void validate_stored(const PagedKvConfig& c, std::span<const Tensor> stored, std::size_t count, Device device) {
  const std::size_t slots = c.layer_groups().group_size;
  if (stored.size() != slots) {
    throw Error(ErrorCode::Shape,
                fmt::format("restore: {} stored page tensors for {} storage tensors", stored.size(), slots));
  }
  const Shape expected = stored_shape(c, count);
  for (std::size_t l = 0; l < stored.size(); ++l) {
    const std::string what = fmt::format("restore: stored pages of storage tensor {}", l);
    detail::require_defined(stored[l], what);
    if (stored[l].shape() != expected) {
      throw Error(ErrorCode::Shape,
                  fmt::format("{} are {}, must be {}", what, stored[l].shape().to_string(), expected.to_string()));
    }
    if (stored[l].dtype() != c.dtype) {
      throw Error(ErrorCode::Config, fmt::format("{} are {}, the config's dtype {}", what,
                                                 dtype_name(stored[l].dtype()), dtype_name(c.dtype)));
    }
    detail::require_device(stored[l].device(), device, what);
  }
}

}  // namespace

std::vector<std::int32_t> PagedKvState::stored_pages() const {
  std::vector<bool> cached(references.size(), false);
  for (const std::int32_t page : cached_pages) {
    if (page >= 0 && static_cast<std::size_t>(page) < cached.size()) cached[static_cast<std::size_t>(page)] = true;
  }
  std::vector<std::int32_t> out;
  for (std::size_t p = 0; p < references.size(); ++p) {
    if (references[p] > 0 || cached[p]) out.push_back(static_cast<std::int32_t>(p));
  }
  return out;
}

PagedKvState PagedKvCache::state() const {
  PagedKvState out;
  std::vector<SequenceId> ids;
  ids.reserve(sequences_.size());
  for (const auto& entry : sequences_) ids.push_back(entry.first);
  std::sort(ids.begin(), ids.end());
  for (const SequenceId id : ids) {
    const Sequence& s = sequences_.at(id);
    std::vector<std::int32_t> pages;
    for (const auto& group : s.pages) pages.insert(pages.end(), group.begin(), group.end());
    out.sequences.push_back(PagedSequenceState{.id = static_cast<std::uint64_t>(id),
                                               .pages = std::move(pages),
                                               .length = s.length,
                                               .positions = s.positions.runs(),
                                               .next_position = s.next_position,
                                               .naming = s.naming,
                                               .salt = s.salt,
                                               .chain = s.chain,
                                               .tail_tokens = s.tail_tokens,
                                               .row = static_cast<std::size_t>(s.row)});
  }
  out.references.resize(pool_->total());
  for (std::size_t p = 0; p < pool_->total(); ++p) {
    const auto page = static_cast<std::int32_t>(p);
    out.references[p] = pool_->references(page);
    if (pool_->named(page)) {
      const detail::PageHash& hash = pool_->hash_of(page);
      out.names.push_back(PagedPageName{.page = page, .low = hash.low, .high = hash.high});
    }
  }
  std::vector<std::int32_t> available;  // the free stack from its top, then the cached pages oldest first
  pool_->next_pages(pool_->available(), available);
  const auto free_end = available.begin() + static_cast<std::ptrdiff_t>(pool_->free());
  out.free_pages.assign(std::make_reverse_iterator(free_end), std::make_reverse_iterator(available.begin()));
  out.cached_pages.assign(free_end, available.end());
  out.free_rows = free_rows_;
  out.next_id = next_id_;
  out.step = step_;
  out.lookup_tokens = lookup_tokens_;
  out.hit_tokens = hit_tokens_;
  out.hit_pages = hit_pages_;
  out.evictions = pool_->evictions();
  return out;
}

PagedKvCache PagedKvCache::restore(const PagedKvConfig& config, const PagedKvState& state,
                                   std::span<const Tensor> stored, Device device, Stream stream) {
  config.validate();
  validate_state(config, state);
  const std::vector<std::int32_t> kept = state.stored_pages();
  validate_stored(config, stored, kept.size(), device);
  PagedKvCache cache(config, device, stream);
  const std::size_t layer_page = config.storage_page_bytes();
  for (std::size_t l = 0; l < cache.pages_.size(); ++l) {
    const auto* from = static_cast<const std::byte*>(stored[l].data());
    auto* to = static_cast<std::byte*>(const_cast<void*>(cache.pages_[l].data()));
    for (std::size_t i = 0, j = 0; i < kept.size(); i = j) {
      for (j = i + 1; j < kept.size() && kept[j] == kept[j - 1] + 1;) ++j;  // a run of consecutive pages
      cache.backend_->copy_device_to_device(to + static_cast<std::size_t>(kept[i]) * layer_page, from + i * layer_page,
                                            (j - i) * layer_page, stream);
    }
  }
  std::vector<std::int32_t> named;
  std::vector<detail::PageHash> hashes;
  for (const PagedPageName& name : state.names) {
    named.push_back(name.page);
    hashes.push_back(detail::PageHash{.low = name.low, .high = name.high});
  }
  cache.pool_ = std::make_unique<detail::PagePool>(state.references, state.free_pages, state.cached_pages, named,
                                                   hashes, state.evictions);
  std::vector<std::size_t> fill(cache.num_pages_, 0);  // per used page: the most tokens a holder keeps in it
  for (const PagedSequenceState& q : state.sequences) {
    Sequence s;
    const std::size_t columns = (q.length + config.page_size - 1) / config.page_size;
    for (std::size_t g = 0; g < cache.groups_.groups(); ++g) {
      s.pages.emplace_back(q.pages.begin() + static_cast<std::ptrdiff_t>(g * columns),
                           q.pages.begin() + static_cast<std::ptrdiff_t>((g + 1) * columns));
    }
    s.length = q.length;
    for (const PositionRuns::Run& run : q.positions) s.positions.append(run.begin, run.length);
    s.next_position = q.next_position;
    s.naming = q.naming;
    s.salt = q.salt;
    s.chain = q.chain;
    s.tail_tokens = q.tail_tokens;
    s.row = static_cast<std::int32_t>(q.row);
    for (const std::vector<std::int32_t>& group : s.pages) {
      for (std::size_t j = 0; j < group.size(); ++j) {
        if (group[j] == cache.null_page_) continue;
        std::size_t& most = fill[static_cast<std::size_t>(group[j])];
        most = std::max(most, std::min(config.page_size, s.length - j * config.page_size));
      }
    }
    cache.upload_row(cache.sequences_.emplace(SequenceId{q.id}, std::move(s)).first->second, 0);
  }
  for (const std::size_t tokens : fill) cache.tokens_ += tokens;
  cache.free_rows_.assign(state.free_rows.begin(), state.free_rows.end());  // within the reserved capacity
  cache.next_id_ = state.next_id;
  cache.step_ = state.step;
  cache.lookup_tokens_ = state.lookup_tokens;
  cache.hit_tokens_ = state.hit_tokens;
  cache.hit_pages_ = state.hit_pages;
  return cache;
}

}  // namespace micache
