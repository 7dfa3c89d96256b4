// PagedKvCache's step: begin_step (validate, count, build the metadata, copy on write, commit) and write.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/paged_kv_cache.hpp"
#include "src/caches/packed_buffer.hpp"
#include "src/caches/page_hash.hpp"
#include "src/caches/page_pool.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

using detail::aligned16;
using detail::packed_view;

// Where each array of a plan sits in its packed device buffer: the outputs
// of the build launch, slot_mapping (I64) first, then the I32 metadata; then
// its I32 inputs, the only part that crosses from the host: the entries'
// rows, lengths after the step, new token counts, the updates' indptr, their
// columns and their pages. Each array starts on a 16-byte boundary.
struct MetadataLayout {
  std::size_t indptr = 0, indices = 0, last = 0, qo = 0;
  std::size_t inputs = 0, rows = 0, lengths = 0, counts = 0, update_indptr = 0, columns = 0, pages = 0, bytes = 0;
};

// A step of `batch` sequences in `groups` layer groups: the build's entries
// are every group's; `total_new` and `total_pages` are one group's;
// `updates`: the page-table columns the step changes, one per fresh or dropped page.
MetadataLayout metadata_layout(std::size_t groups, std::size_t sequences, std::size_t new_tokens, std::size_t pages,
                               std::size_t updates) {
  const std::size_t batch = groups * sequences, total_new = groups * new_tokens, total_pages = groups * pages;
  MetadataLayout l;
  l.indptr = aligned16(8 * total_new);
  l.indices = aligned16(l.indptr + 4 * (batch + 1));
  l.last = aligned16(l.indices + 4 * total_pages);
  l.qo = aligned16(l.last + 4 * batch);
  l.inputs = aligned16(l.qo + 4 * (batch + 1));
  l.rows = 0;  // offsets of the inputs are from l.inputs
  l.lengths = aligned16(4 * batch);
  l.counts = aligned16(l.lengths + 4 * batch);
  l.update_indptr = aligned16(l.counts + 4 * batch);
  l.columns = aligned16(l.update_indptr + 4 * (batch + 1));
  l.pages = aligned16(l.columns + 4 * updates);
  l.bytes = l.inputs + l.pages + 4 * updates;
  return l;
}

template <class T>
void store(std::byte* base, std::size_t offset, std::size_t index, T value) {
  std::memcpy(base + offset + index * sizeof(T), &value, sizeof(T));
}

}  // namespace

struct PagedKvCache::StepEntry {
  SequenceId id{};
  Sequence* sequence = nullptr;
  std::size_t new_tokens = 0;
  std::size_t old_pages = 0;             // columns before the step (in every group)
  std::size_t pages = 0;                 // columns after it
  PositionRuns positions;                // its positions after the step, when appending would allocate; else empty
  const std::int32_t* tokens = nullptr;  // its new tokens' ids, or none (the chain breaks)
  std::vector<detail::PageHash> names;   // of the pages it fills, in order
  std::size_t tail_from = 0;             // tokens[tail_from..new_tokens) end in its partly filled last page
};

namespace {

// One entry's table changes in one layer group.
struct GroupStep {
  std::size_t first_fresh = 0;  // its first fresh page is the reservation's fresh_pages[first_fresh]
  bool copy_on_write = false;   // its partly filled last page is shared: the first fresh page replaces it
  std::size_t drop_begin = 0;   // a window group's columns [drop_begin, drop_end) go back to the pool
  std::size_t drop_end = 0;
};

}  // namespace

struct PagedKvCache::Reservation {
  std::vector<StepEntry> entries;
  std::vector<GroupStep> parts;           // [groups * batch]: part g * batch + i is entry i in group g
  std::vector<std::int32_t> fresh_pages;  // what the pool's next `fresh` allocations return, after the drops
  std::vector<std::int32_t> freed;        // dropped pages whose last holder drops them, in release order
  std::size_t total_new = 0;              // over the entries, in one group
  std::size_t total_pages = 0;            // likewise
  std::size_t fresh = 0;
  std::size_t copies = 0;
  std::size_t drops = 0;

  const StepEntry& entry_of(std::size_t part) const noexcept { return entries[part % entries.size()]; }
  std::size_t fresh_of(std::size_t part) const noexcept {
    const StepEntry& e = entry_of(part);
    return e.pages - e.old_pages + (parts[part].copy_on_write ? 1 : 0);
  }
};

// The first column at or after a window group's sink columns that holds a
// page: its table is [sink columns][dropped columns][held columns], so a
// binary search finds it. O(log pages).
std::size_t PagedKvCache::first_held_column(const std::vector<std::int32_t>& pages, const PagedLayerKind& kind) const {
  const std::size_t sink_columns = (kind.sinks + config_.page_size - 1) / config_.page_size;
  if (sink_columns >= pages.size()) return pages.size();
  return static_cast<std::size_t>(std::partition_point(pages.begin() + static_cast<std::ptrdiff_t>(sink_columns),
                                                       pages.end(),
                                                       [&](std::int32_t page) { return page == null_page_; }) -
                                  pages.begin());
}

// Validates a step and counts what it needs; changes nothing but the
// duplicate-check marks. Copy on write follows each shared last page's
// holders in id order: a writer copies while another holder keeps the page.
// A window group drops the whole columns below L + 1 - window past its sinks
// (L - window for a sequence that gets no new token: its query is its last).
PagedKvCache::Reservation PagedKvCache::reserve(std::span<const SequenceId> ids,
                                                std::span<const std::size_t> new_tokens,
                                                std::span<const std::int32_t> token_ids) {
  if (ids.size() != new_tokens.size()) {
    throw Error(ErrorCode::Shape,
                fmt::format("begin_step: {} ids and {} new token counts", ids.size(), new_tokens.size()));
  }
  Reservation r;
  r.entries.resize(ids.size());
  const std::uint64_t listing = ++listing_;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    Sequence& s = sequence_or_throw(ids[i], "begin_step");
    if (s.listed == listing) {
      std::size_t first = 0;
      while (r.entries[first].sequence != &s) ++first;
      throw Error(ErrorCode::Config, fmt::format("begin_step: sequence {} listed twice (entries {} and {})",
                                                 static_cast<std::uint64_t>(ids[i]), first, i));
    }
    s.listed = listing;
    r.entries[i].id = ids[i];
    r.entries[i].sequence = &s;
    r.entries[i].new_tokens = new_tokens[i];
  }
  const std::size_t page_size = config_.page_size;
  const std::size_t slots = pool_->total() * page_size;
  for (StepEntry& e : r.entries) {
    const Sequence& s = *e.sequence;
    if (e.new_tokens > slots - s.length) {
      throw Error(ErrorCode::OutOfMemory,
                  fmt::format("begin_step: sequence {} of {} tokens cannot grow by {} in a pool of {} slots",
                              static_cast<std::uint64_t>(e.id), s.length, e.new_tokens, slots));
    }
    e.old_pages = s.pages[0].size();
    e.pages = (s.length + e.new_tokens + page_size - 1) / page_size;
    if (e.new_tokens > sequence_len_ - std::min(s.length, sequence_len_)) {
      throw Error(ErrorCode::Config,
                  fmt::format("begin_step: sequence {} of {} tokens cannot grow by {}: at most {} tokens "
                              "(max_sequence_len)",
                              static_cast<std::uint64_t>(e.id), s.length, e.new_tokens, sequence_len_));
    }
    r.total_new += e.new_tokens;
    r.total_pages += e.pages;
    const std::size_t groups = groups_.groups();
    if (r.total_new > detail::kInt32Max / groups || r.total_pages > detail::kInt32Max / groups) {
      throw Error(ErrorCode::Config,
                  fmt::format("begin_step: {} new tokens and {} pages in {} layer groups, above {} (the metadata is "
                              "int32)",
                              r.total_new, r.total_pages, groups, detail::kInt32Max));
    }
  }
  const std::size_t batch = r.entries.size();
  r.parts.resize(groups_.groups() * batch);
  if (groups_.has_windows()) {
    std::unordered_map<std::int32_t, std::uint32_t> holders_left;  // of dropped shared pages
    for (std::size_t part = 0; part < r.parts.size(); ++part) {
      const Sequence& s = *r.entries[part % batch].sequence;
      const PagedLayerKind& kind = groups_.group_kinds[part / batch];
      const std::size_t first_query = r.entries[part % batch].new_tokens > 0 ? s.length : s.length - 1;
      if (kind.is_full() || s.length == 0 || first_query + 1 <= kind.window) continue;
      const std::vector<std::int32_t>& pages = s.pages[part / batch];
      GroupStep& p = r.parts[part];
      p.drop_end = (first_query + 1 - kind.window) / page_size;
      p.drop_begin = std::min(first_held_column(pages, kind), p.drop_end);
      r.drops += p.drop_end - p.drop_begin;
      for (std::size_t column = p.drop_begin; column < p.drop_end; ++column) {
        const std::int32_t page = pages[column];
        std::uint32_t& left = holders_left.try_emplace(page, pool_->references(page)).first->second;
        if (--left == 0) r.freed.push_back(page);
      }
    }
  }
  std::unordered_map<std::int32_t, std::uint32_t> holders_left;  // of shared last pages that get written
  for (std::size_t part = 0; part < r.parts.size(); ++part) {
    const StepEntry& e = r.entries[part % batch];
    const Sequence& s = *e.sequence;
    const std::vector<std::int32_t>& pages = s.pages[part / batch];
    GroupStep& p = r.parts[part];
    if (e.new_tokens > 0 && s.length % page_size != 0 && pool_->references(pages.back()) > 1) {
      std::uint32_t& left = holders_left.try_emplace(pages.back(), pool_->references(pages.back())).first->second;
      p.copy_on_write = left > 1;
      if (p.copy_on_write) --left;
    }
    p.first_fresh = r.fresh;
    r.fresh += r.fresh_of(part);
    r.copies += p.copy_on_write ? 1 : 0;
  }
  if (!token_ids.empty() && token_ids.size() != r.total_new) {
    throw Error(ErrorCode::Shape,
                fmt::format("begin_step: {} token ids for {} new tokens", token_ids.size(), r.total_new));
  }
  if (r.fresh > pool_->available() + r.freed.size()) {
    throw Error(
        ErrorCode::OutOfMemory,
        fmt::format("begin_step: needs {} pages ({} copied on write), {} free{} and {} cached of {}", r.fresh, r.copies,
                    pool_->free(),
                    r.freed.empty() ? std::string() : fmt::format(" (+{} window layers give back)", r.freed.size()),
                    pool_->cached(), pool_->total()));
  }
  // The drops go back first (commit), onto the free stack: the last one is handed out first.
  const std::size_t reused = std::min(r.fresh, r.freed.size());
  r.fresh_pages.assign(r.freed.rbegin(), r.freed.rbegin() + static_cast<std::ptrdiff_t>(reused));
  std::vector<std::int32_t> more;
  pool_->next_pages(r.fresh - reused, more);
  r.fresh_pages.insert(r.fresh_pages.end(), more.begin(), more.end());
  std::size_t token = 0;
  for (StepEntry& e : r.entries) {
    if (!token_ids.empty() && e.new_tokens > 0 && e.sequence->naming) {
      hash_new_pages(e, token_ids.subspan(token, e.new_tokens));
    }
    token += e.new_tokens;
  }
  return r;
}

// Names the pages a step fills for `e`, page by page down the chain: the
// first from its partly filled last page's tokens and the new ones that
// complete it, the others from new tokens alone; nothing is copied. Reserves
// the capacity of the sequence's tail for the new ones that commit appends.
void PagedKvCache::hash_new_pages(StepEntry& e, std::span<const std::int32_t> tokens) {
  Sequence& s = *e.sequence;
  const std::size_t page_size = config_.page_size;
  e.tokens = tokens.data();
  std::span<const std::int32_t> held(s.tail_tokens);
  detail::PageHash chain{.low = s.chain[0], .high = s.chain[1]};
  std::size_t next = 0;
  while (tokens.size() - next >= page_size - held.size()) {
    const std::size_t take = page_size - held.size();
    chain = detail::hash_page(chain, s.salt, held, tokens.subspan(next, take));
    e.names.push_back(chain);
    next += take;
    held = {};
  }
  e.tail_from = next;
  s.tail_tokens.reserve(held.size() + tokens.size() - next);  // capacity only
}

// Writes the step's inputs into the staging buffer: per entry of each
// group (the build's entries, group after group) its row of the group,
// length after the step and new token count, and the page-table columns it
// changes (the copy-on-write replacement of its last page, its new pages,
// then the null page in a window group's dropped columns).
// O(groups x batch + fresh and dropped pages).
void PagedKvCache::fill_inputs(const Reservation& r) {
  const MetadataLayout l =
      metadata_layout(groups_.groups(), r.entries.size(), r.total_new, r.total_pages, r.fresh + r.drops);
  const std::size_t bytes = l.bytes - l.inputs;
  if (staging_.size() < bytes) staging_.resize(bytes);
  std::byte* in = staging_.data();
  std::size_t update = 0;
  store<std::int32_t>(in, l.update_indptr, 0, 0);
  const std::size_t batch = r.entries.size();
  for (std::size_t part = 0; part < r.parts.size(); ++part) {
    const StepEntry& e = r.entry_of(part);
    const GroupStep& p = r.parts[part];
    const Sequence& s = *e.sequence;
    store(in, l.rows, part,
          static_cast<std::int32_t>(static_cast<std::size_t>(s.row) + part / batch * config_.max_sequences));
    store(in, l.lengths, part, static_cast<std::int32_t>(s.length + e.new_tokens));
    store(in, l.counts, part, static_cast<std::int32_t>(e.new_tokens));
    const std::size_t first_column = p.copy_on_write ? e.old_pages - 1 : e.old_pages;
    for (std::size_t k = 0; k < r.fresh_of(part); ++k, ++update) {
      store(in, l.columns, update, static_cast<std::int32_t>(first_column + k));
      store(in, l.pages, update, r.fresh_pages[p.first_fresh + k]);
    }
    for (std::size_t column = p.drop_begin; column < p.drop_end; ++column, ++update) {
      store(in, l.columns, update, static_cast<std::int32_t>(column));
      store(in, l.pages, update, null_page_);
    }
    store(in, l.update_indptr, part + 1, static_cast<std::int32_t>(update));
  }
}

// Allocates the plan's buffer, sends the inputs (one host-to-device copy)
// and builds the metadata on the device (one Backend::paged_build_step).
PagedStepPlan PagedKvCache::build_plan(const Reservation& r) {
  const std::size_t batch = r.entries.size();
  const std::size_t groups = groups_.groups();
  const MetadataLayout l =
      metadata_layout(groups_.groups(), r.entries.size(), r.total_new, r.total_pages, r.fresh + r.drops);
  const Tensor buffer = Tensor::empty({l.bytes}, DType::U8, device_, stream_);
  auto* base = static_cast<std::byte*>(const_cast<void*>(buffer.data()));
  backend_->copy_host_to_device(base + l.inputs, staging_.data(), l.bytes - l.inputs, stream_);
  const auto at = [&](std::size_t offset) { return reinterpret_cast<std::int32_t*>(base + offset); };
  if (batch > 0) {
    backend_->paged_build_step(PagedStepBuild{.tables = tables(),
                                              .batch = groups * batch,
                                              .entry_rows = at(l.inputs + l.rows),
                                              .entry_lengths = at(l.inputs + l.lengths),
                                              .entry_new = at(l.inputs + l.counts),
                                              .update_indptr = at(l.inputs + l.update_indptr),
                                              .update_cols = at(l.inputs + l.columns),
                                              .update_pages = at(l.inputs + l.pages),
                                              .slot_mapping = reinterpret_cast<std::int64_t*>(base),
                                              .kv_indptr = at(l.indptr),
                                              .kv_indices = at(l.indices),
                                              .kv_last_page_len = at(l.last),
                                              .qo_indptr = at(l.qo)},
                               stream_);
  } else {
    const std::int32_t zeros[2] = {0, 0};  // an empty step's kv_indptr and qo_indptr are [0]
    backend_->copy_host_to_device(at(l.indptr), zeros, 4, stream_);
    backend_->copy_host_to_device(at(l.qo), zeros + 1, 4, stream_);
  }
  PagedStepPlan plan;
  plan.slot_mapping = packed_view(buffer, 0, {groups * r.total_new}, DType::I64);
  plan.kv_indptr = packed_view(buffer, l.indptr, {batch + 1}, DType::I32);
  plan.kv_indices = packed_view(buffer, l.indices, {groups * r.total_pages}, DType::I32);
  plan.kv_last_page_len = packed_view(buffer, l.last, {batch}, DType::I32);
  plan.qo_indptr = packed_view(buffer, l.qo, {batch + 1}, DType::I32);
  plan.batch = batch;
  plan.total_new = r.total_new;
  plan.total_pages = r.total_pages;
  plan.groups = groups;
  plan.cache_ = serial_;
  return plan;
}

// Copies each shared partly filled last page into the sequence's first fresh
// page of its group, in every storage tensor. The targets are free pages: a
// failure changes nothing.
void PagedKvCache::copy_on_write(const Reservation& r) {
  const std::size_t bytes = config_.storage_page_bytes();
  for (std::size_t part = 0; part < r.parts.size(); ++part) {
    const GroupStep& p = r.parts[part];
    if (!p.copy_on_write) continue;
    const auto source = static_cast<std::size_t>(r.entry_of(part).sequence->pages[part / r.entries.size()].back());
    const auto target = static_cast<std::size_t>(r.fresh_pages[p.first_fresh]);
    for (const Tensor& layer : pages_) {
      auto* base = static_cast<std::byte*>(const_cast<void*>(layer.data()));
      backend_->copy_device_to_device(base + target * bytes, base + source * bytes, bytes, stream_);
    }
  }
}

// Gives back the window groups' dropped pages, takes the fresh pages in the
// order reserve foretold, advances every listed sequence, then names the
// pages the step fills (after every allocation, so an eviction cannot
// forget a name given in this step). Allocates nothing (page lists were
// reserved, positions and names prepared), so it cannot throw.
void PagedKvCache::commit(Reservation& r) noexcept {
  const std::size_t page_size = config_.page_size;
  const std::size_t batch = r.entries.size();
  for (std::size_t part = 0; part < r.parts.size(); ++part) {
    std::vector<std::int32_t>& pages = r.entry_of(part).sequence->pages[part / batch];
    for (std::size_t column = r.parts[part].drop_begin; column < r.parts[part].drop_end; ++column) {
      if (pool_->release(pages[column])) tokens_ -= page_size;  // a whole column
      pages[column] = null_page_;
    }
  }
  for (std::size_t part = 0; part < r.parts.size(); ++part) {
    const StepEntry& e = r.entry_of(part);
    std::vector<std::int32_t>& pages = e.sequence->pages[part / batch];
    if (r.parts[part].copy_on_write) {
      const std::int32_t copy = pool_->allocate();
      pool_->release(pages.back());
      pages.back() = copy;
      tokens_ += e.sequence->length % page_size;  // the copied tokens are now stored twice
    }
    while (pages.size() < e.pages) pages.push_back(pool_->allocate());
  }
  for (StepEntry& e : r.entries) {
    Sequence& s = *e.sequence;
    if (!e.positions.empty()) {
      s.positions = std::move(e.positions);
    } else {
      s.positions.append(s.next_position, e.new_tokens);
    }
    s.next_position += e.new_tokens;
    s.length += e.new_tokens;
    tokens_ += e.new_tokens * groups_.groups();
  }
  for (StepEntry& e : r.entries) {
    Sequence& s = *e.sequence;
    if (e.new_tokens == 0) continue;
    if (e.tokens == nullptr) {
      s.naming = false;
      continue;
    }
    const std::size_t first = s.length / page_size - e.names.size();
    for (std::size_t j = 0; j < e.names.size(); ++j) pool_->name(s.pages[0][first + j], e.names[j]);
    if (!e.names.empty()) {
      s.chain = {e.names.back().low, e.names.back().high};
      s.tail_tokens.clear();
    }
    s.tail_tokens.insert(s.tail_tokens.end(), e.tokens + e.tail_from, e.tokens + e.new_tokens);  // reserved
  }
}

PagedStepPlan PagedKvCache::begin_step(std::span<const SequenceId> ids, std::span<const std::size_t> new_tokens,
                                       std::span<const std::int32_t> token_ids) {
  Reservation r = reserve(ids, new_tokens, token_ids);
  for (StepEntry& e : r.entries) {
    Sequence& s = *e.sequence;
    for (auto& pages : s.pages) pages.reserve(e.pages);  // capacity only: commit's push_backs then cannot throw
    const auto& runs = s.positions.runs();
    if (e.new_tokens > 0 && (runs.empty() || runs.back().begin + runs.back().length != s.next_position)) {
      e.positions = s.positions;  // appending would add a run (allocate): prepare it here
      e.positions.append(s.next_position, e.new_tokens);
    }
  }
  fill_inputs(r);
  PagedStepPlan plan = build_plan(r);
  copy_on_write(r);
  commit(r);
  plan.step_ = ++step_;
  return plan;
}

void PagedKvCache::check_plan(const PagedStepPlan& plan) const {
  if (plan.cache_ != serial_) throw Error(ErrorCode::Config, "write: the plan is of another cache (or of none)");
  if (plan.step_ != step_) {
    throw Error(ErrorCode::Config,
                fmt::format("write: the plan is of step {}, the cache is at step {}", plan.step_, step_));
  }
}

Tensor PagedKvCache::slot_mapping(const PagedStepPlan& plan, std::size_t layer) const {
  const std::size_t group = group_of(layer);
  if (plan.cache_ != serial_) {
    throw Error(ErrorCode::Config, "slot_mapping: the plan is of another cache (or of none)");
  }
  return plan.slot_mapping.narrow(group * plan.total_new, plan.total_new);
}

Tensor PagedKvCache::kv_indices(const PagedStepPlan& plan, std::size_t layer) const {
  const std::size_t group = group_of(layer);
  if (plan.cache_ != serial_) throw Error(ErrorCode::Config, "kv_indices: the plan is of another cache (or of none)");
  return plan.kv_indices.narrow(group * plan.total_pages, plan.total_pages);
}

void PagedKvCache::check_tokens(const Tensor& tensor, std::size_t tokens, const char* what) const {
  detail::require_defined(tensor, what);
  detail::require_rank(tensor, 3, what, "[total_new, kv_heads, head_dim]");
  const Shape expected{tokens, config_.kv_heads, config_.head_dim};
  if (tensor.shape() != expected) {
    throw Error(ErrorCode::Shape, fmt::format("{} {} must be {} ([total_new, kv_heads, head_dim])", what,
                                              tensor.shape().to_string(), expected.to_string()));
  }
  if (tensor.dtype() != config_.dtype) {
    throw Error(ErrorCode::Config,
                fmt::format("{} are {}, the pages {}", what, dtype_name(tensor.dtype()), dtype_name(config_.dtype)));
  }
  detail::require_device(tensor.device(), device_, what);
}

void PagedKvCache::write(std::size_t layer, const PagedStepPlan& plan, const Tensor& keys, const Tensor& values) {
  const std::size_t group = group_of(layer);
  check_plan(plan);
  check_tokens(keys, plan.total_new, "write: keys");
  check_tokens(values, plan.total_new, "write: values");
  if (plan.total_new == 0) return;
  backend_->paged_write(
      PagedWrite{.pages = page_layout(layer),
                 .keys = keys.data(),
                 .values = values.data(),
                 .token_stride = config_.kv_heads * config_.head_dim,
                 .tokens = plan.total_new,
                 .slot_mapping = static_cast<const std::int64_t*>(plan.slot_mapping.data()) + group * plan.total_new},
      stream_);
}

}  // namespace micache
