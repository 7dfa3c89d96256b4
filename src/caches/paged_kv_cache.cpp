#include "micache/paged_kv_cache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>
#include <vector>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/caches/page_hash.hpp"
#include "src/caches/page_pool.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

Shape page_tensor_shape(const PagedKvConfig& c, std::size_t num_pages) {
  return c.layout == PagedLayout::Nhd ? Shape{num_pages, 2, c.page_size, c.kv_heads, c.head_dim}
                                      : Shape{num_pages, 2, c.kv_heads, c.page_size, c.head_dim};
}

std::atomic<std::uint64_t> next_serial{1};

[[noreturn]] void throw_unknown(SequenceId id, const char* operation) {
  throw Error(ErrorCode::Hook, fmt::format("{}: unknown sequence {} (never added, or released)", operation,
                                           static_cast<std::uint64_t>(id)));
}

}  // namespace

PagedKvCache::PagedKvCache(const PagedKvConfig& config, Device device, Stream stream)
    : config_(config), device_(device), stream_(stream) {
  config_.validate();
  num_pages_ = config_.pages();
  groups_ = config_.layer_groups();
  if (groups_.has_windows()) null_page_ = static_cast<std::int32_t>(config_.pool_pages());
  slot_bytes_ = config_.slot_bytes();
  page_bytes_ = config_.page_bytes();
  backend_ = &backend_for(device);
  std::vector<Tensor> pages;
  pages.reserve(groups_.group_size);
  for (std::size_t l = 0; l < groups_.group_size; ++l) {
    pages.push_back(Tensor::empty(page_tensor_shape(config_, num_pages_), config_.dtype, device, stream));
  }
  sequence_len_ = config_.sequence_len();
  row_capacity_ = config_.row_capacity();
  tables_ = Tensor::empty({config_.table_bytes() / 4}, DType::I32, device, stream);
  pool_ = std::make_unique<detail::PagePool>(config_.pool_pages());
  free_rows_.reserve(config_.max_sequences);
  for (std::size_t r = config_.max_sequences; r > 0; --r) free_rows_.push_back(static_cast<std::int32_t>(r - 1));
  if (null_page_ >= 0) {  // zeros, so that a window layer's dropped tokens gather as zeros
    const std::size_t bytes = config_.storage_page_bytes();
    const std::vector<std::byte> zeros(bytes);
    for (const Tensor& storage : pages) {
      auto* base = static_cast<std::byte*>(const_cast<void*>(storage.data()));
      backend_->copy_host_to_device(base + static_cast<std::size_t>(null_page_) * bytes, zeros.data(), bytes, stream);
    }
  }
  pages_ = std::move(pages);
  serial_ = next_serial.fetch_add(1, std::memory_order_relaxed);
}

PagedKvCache::PagedKvCache(PagedKvCache&&) noexcept = default;
PagedKvCache& PagedKvCache::operator=(PagedKvCache&&) noexcept = default;
PagedKvCache::~PagedKvCache() = default;

Tensor PagedKvCache::pages(std::size_t layer) const {
  detail::require_index(layer, config_.n_layers, "layer", "layers");
  return pages_[groups_.layer_slot[layer]];
}

std::size_t PagedKvCache::group_of(std::size_t layer) const {
  detail::require_index(layer, config_.n_layers, "layer", "layers");
  return groups_.layer_group[layer];
}

PagedPages PagedKvCache::page_layout(std::size_t layer) const {
  detail::require_index(layer, config_.n_layers, "layer", "layers");
  return storage_layout(groups_.layer_slot[layer]);
}

PagedPages PagedKvCache::storage_layout(std::size_t slot) const noexcept {
  // The descriptor hands out the storage for writing: the pages are the
  // caller's to fill through FlashInfer as well as through `write`.
  return PagedPages{.data = const_cast<void*>(pages_[slot].data()),
                    .dtype = config_.dtype,
                    .layout = config_.layout,
                    .num_pages = num_pages_,
                    .page_size = config_.page_size,
                    .kv_heads = config_.kv_heads,
                    .head_dim = config_.head_dim};
}

PagedKvCache::Sequence& PagedKvCache::sequence_or_throw(SequenceId id, const char* operation) {
  return const_cast<Sequence&>(std::as_const(*this).sequence_or_throw(id, operation));
}

const PagedKvCache::Sequence& PagedKvCache::sequence_or_throw(SequenceId id, const char* operation) const {
  const auto found = sequences_.find(id);
  if (found == sequences_.end()) throw_unknown(id, operation);
  return found->second;
}

SequenceId PagedKvCache::add_sequence() { return add_sequence(std::span<const std::int32_t>{}).id; }

PrefixHit PagedKvCache::add_sequence(std::span<const std::int32_t> prompt, std::uint64_t salt) {
  const std::size_t page_size = config_.page_size;
  const bool naming = !groups_.has_windows();  // pages are named only without window layers
  const std::size_t usable = naming ? std::min(prompt.empty() ? 0 : (prompt.size() - 1) / page_size, row_capacity_) : 0;
  Sequence s;
  s.pages.resize(groups_.groups());
  s.naming = naming;
  s.salt = salt;
  detail::PageHash chain{};
  for (std::size_t j = 0; j < usable; ++j) {
    const detail::PageHash hash = detail::hash_page(chain, salt, prompt.subspan(j * page_size, page_size));
    const std::int32_t page = pool_->find(hash);
    if (page < 0) break;
    s.pages[0].push_back(page);
    chain = hash;
  }
  s.chain = {chain.low, chain.high};
  s.length = s.pages[0].size() * page_size;
  s.positions.append(0, s.length);
  s.next_position = s.length;
  const SequenceId id = adopt(std::move(s), "add_sequence");
  const Sequence& added = sequences_.at(id);
  for (const std::int32_t page : added.pages[0]) {
    if (pool_->references(page) == 0) tokens_ += page_size;  // a cached page is used again
    pool_->retain(page);
  }
  lookup_tokens_ += prompt.size();
  hit_tokens_ += added.length;
  hit_pages_ += added.pages[0].size();
  return PrefixHit{.id = id, .cached_tokens = added.length};
}

void PagedKvCache::retain_pages(const Sequence& s) {
  for (const auto& group : s.pages) {
    for (const std::int32_t page : group) {
      if (page != null_page_) pool_->retain(page);
    }
  }
}

SequenceId PagedKvCache::fork(SequenceId parent) {
  Sequence child = sequence_or_throw(parent, "fork");
  const SequenceId id = adopt(std::move(child), "fork");
  retain_pages(sequences_.at(id));
  return id;
}

// Gives `s` the next id and a page-table row, and sends the row its pages
// and length. Error: OutOfMemory when every row is taken (nothing changed).
SequenceId PagedKvCache::adopt(Sequence&& s, const char* operation) {
  if (free_rows_.empty()) {
    throw Error(ErrorCode::OutOfMemory,
                fmt::format("{}: {} sequences alive, the most the page tables hold (max_sequences)", operation,
                            sequences_.size()));
  }
  s.row = free_rows_.back();
  const SequenceId id{next_id_};
  const Sequence& added = sequences_.emplace(id, std::move(s)).first->second;
  free_rows_.pop_back();
  ++next_id_;
  upload_row(added, 0);
  return id;
}

PagedTables PagedKvCache::tables() const noexcept {
  auto* base = static_cast<std::int32_t*>(const_cast<void*>(tables_.data()));
  const std::size_t rows = groups_.groups() * config_.max_sequences;
  return PagedTables{.block_table = base,
                     .lengths = base + rows * row_capacity_,
                     .rows = rows,
                     .row_capacity = row_capacity_,
                     .page_size = config_.page_size};
}

// Sends columns [first_column, pages) of `s`'s rows and their length to the
// device page tables, in stream order (two host-to-device copies per group;
// the host's data may change once they return).
void PagedKvCache::upload_row(const Sequence& s, std::size_t first_column) {
  const PagedTables t = tables();
  const auto length = static_cast<std::int32_t>(s.length);
  for (std::size_t g = 0; g < s.pages.size(); ++g) {
    const std::size_t row = static_cast<std::size_t>(s.row) + g * config_.max_sequences;
    const std::vector<std::int32_t>& pages = s.pages[g];
    if (first_column < pages.size()) {
      backend_->copy_host_to_device(&t.page(row, first_column), pages.data() + first_column,
                                    4 * (pages.size() - first_column), stream_);
    }
    backend_->copy_host_to_device(t.lengths + row, &length, 4, stream_);
  }
}

Tensor PagedKvCache::block_table(std::size_t layer) const {
  const std::size_t table = config_.max_sequences * row_capacity_;
  return tables_.narrow(group_of(layer) * table, table).reshape({config_.max_sequences, row_capacity_});
}

std::size_t PagedKvCache::row_of(SequenceId id) const {
  return static_cast<std::size_t>(sequence_or_throw(id, "row_of").row);
}

void PagedKvCache::release(SequenceId id) {
  const auto found = sequences_.find(id);
  if (found == sequences_.end()) throw_unknown(id, "release");
  const Sequence& s = found->second;
  const std::size_t page_size = config_.page_size;
  for (const std::vector<std::int32_t>& pages : s.pages) {
    for (std::size_t i = pages.size(); i-- > 0;) {
      if (pages[i] != null_page_ && pool_->release(pages[i])) tokens_ -= std::min(page_size, s.length - i * page_size);
    }
  }
  free_rows_.push_back(s.row);  // within the capacity reserved at construction
  sequences_.erase(found);
}

std::size_t PagedKvCache::length(SequenceId id) const { return sequence_or_throw(id, "length").length; }

std::vector<std::int32_t> PagedKvCache::pages_of(SequenceId id, std::size_t layer) const {
  const Sequence& s = sequence_or_throw(id, "pages_of");
  return s.pages[group_of(layer)];
}

std::vector<std::size_t> PagedKvCache::positions(SequenceId id) const {
  return sequence_or_throw(id, "positions").positions.expand();
}

PagedKv PagedKvCache::gather(SequenceId id, std::size_t layer) const {
  const Sequence& s = sequence_or_throw(id, "gather");
  const std::vector<std::int32_t>& pages = s.pages[group_of(layer)];
  const Shape shape{1, config_.kv_heads, s.length, config_.head_dim};
  PagedKv out{Tensor::empty(shape, config_.dtype, device_, stream_),
              Tensor::empty(shape, config_.dtype, device_, stream_)};
  if (s.length == 0) return out;
  const Tensor page_ids = Tensor::from_host_i32(pages, {pages.size()}, device_, stream_);
  backend_->paged_gather(PagedGather{.pages = page_layout(layer),
                                     .page_ids = static_cast<const std::int32_t*>(page_ids.data()),
                                     .tokens = s.length,
                                     .keys = out.keys.mutable_data(),
                                     .values = out.values.mutable_data()},
                         stream_);
  return out;
}

PagedPoolStats PagedKvCache::pool_stats() const noexcept {
  const std::size_t page = page_bytes_;
  return PagedPoolStats{.pages_total = pool_->total(),
                        .pages_used = pool_->used(),
                        .pages_cached = pool_->cached(),
                        .pages_free = pool_->free(),
                        .pages_shared = pool_->shared(),
                        .tokens = tokens_,
                        .bytes_total = pool_->total() * page,
                        .bytes_used = pool_->used() * page,
                        .bytes_cached = pool_->cached() * page,
                        .bytes_free = pool_->free() * page};
}

PrefixCacheStats PagedKvCache::prefix_stats() const noexcept {
  return PrefixCacheStats{.lookup_tokens = lookup_tokens_,
                          .hit_tokens = hit_tokens_,
                          .hit_pages = hit_pages_,
                          .evictions = pool_->evictions(),
                          .named_pages = pool_->names()};
}

PagedSequenceStats PagedKvCache::sequence_stats(SequenceId id) const {
  const Sequence& s = sequence_or_throw(id, "sequence_stats");
  const std::size_t page_size = config_.page_size;
  std::size_t pages = 0, slots = 0;
  for (const std::vector<std::int32_t>& group : s.pages) {
    if (null_page_ < 0) {
      pages += group.size();
      slots += s.length;
      continue;
    }
    for (std::size_t j = 0; j < group.size(); ++j) {
      if (group[j] == null_page_) continue;
      ++pages;
      slots += std::min(page_size, s.length - j * page_size);
    }
  }
  return PagedSequenceStats{
      .tokens = s.length, .pages = pages, .bytes = pages * page_bytes_, .slack = pages * page_size - slots};
}

std::size_t PagedKvCache::memory_usage() const noexcept { return tokens_ * slot_bytes_; }

std::size_t PagedKvCache::memory_reserved() const noexcept { return num_pages_ * page_bytes_ + tables_.nbytes(); }

}  // namespace micache
