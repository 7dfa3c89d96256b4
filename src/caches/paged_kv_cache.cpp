#include "micache/paged_kv_cache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

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
  token_bytes_ = config_.bytes_per_token();
  page_bytes_ = config_.page_bytes();
  backend_ = &backend_for(device);
  std::vector<Tensor> pages;
  pages.reserve(config_.n_layers);
  for (std::size_t l = 0; l < config_.n_layers; ++l) {
    pages.push_back(Tensor::empty(page_tensor_shape(config_, num_pages_), config_.dtype, device, stream));
  }
  sequence_len_ = config_.sequence_len();
  row_capacity_ = config_.row_capacity();
  tables_ = Tensor::empty({config_.table_bytes() / 4}, DType::I32, device, stream);
  pool_ = std::make_unique<detail::PagePool>(num_pages_);
  free_rows_.reserve(config_.max_sequences);
  for (std::size_t r = config_.max_sequences; r > 0; --r) free_rows_.push_back(static_cast<std::int32_t>(r - 1));
  pages_ = std::move(pages);
  serial_ = next_serial.fetch_add(1, std::memory_order_relaxed);
}

PagedKvCache::PagedKvCache(PagedKvCache&&) noexcept = default;
PagedKvCache& PagedKvCache::operator=(PagedKvCache&&) noexcept = default;
PagedKvCache::~PagedKvCache() = default;

Tensor PagedKvCache::pages(std::size_t layer) const {
  detail::require_index(layer, pages_.size(), "layer", "layers");
  return pages_[layer];
}

PagedPages PagedKvCache::page_layout(std::size_t layer) const {
  detail::require_index(layer, pages_.size(), "layer", "layers");
  // The descriptor hands out the storage for writing: the pages are the
  // caller's to fill through FlashInfer as well as through `write`.
  return PagedPages{.data = const_cast<void*>(pages_[layer].data()),
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
  const std::size_t usable = std::min(prompt.empty() ? 0 : (prompt.size() - 1) / page_size, row_capacity_);
  Sequence s;
  s.salt = salt;
  detail::PageHash chain{};
  for (std::size_t j = 0; j < usable; ++j) {
    const detail::PageHash hash = detail::hash_page(chain, salt, prompt.subspan(j * page_size, page_size));
    const std::int32_t page = pool_->find(hash);
    if (page < 0) break;
    s.pages.push_back(page);
    chain = hash;
  }
  s.chain = {chain.low, chain.high};
  s.length = s.pages.size() * page_size;
  s.positions.append(0, s.length);
  s.next_position = s.length;
  const SequenceId id = adopt(std::move(s), "add_sequence");
  const Sequence& added = sequences_.at(id);
  for (const std::int32_t page : added.pages) {
    if (pool_->references(page) == 0) tokens_ += page_size;  // a cached page is used again
    pool_->retain(page);
  }
  lookup_tokens_ += prompt.size();
  hit_tokens_ += added.length;
  hit_pages_ += added.pages.size();
  return PrefixHit{.id = id, .cached_tokens = added.length};
}

SequenceId PagedKvCache::fork(SequenceId parent) {
  Sequence child = sequence_or_throw(parent, "fork");
  const SequenceId id = adopt(std::move(child), "fork");
  for (const std::int32_t page : sequences_.at(id).pages) pool_->retain(page);
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
  return PagedTables{.block_table = base,
                     .lengths = base + config_.max_sequences * row_capacity_,
                     .rows = config_.max_sequences,
                     .row_capacity = row_capacity_,
                     .page_size = config_.page_size};
}

// Sends columns [first_column, pages) of `s`'s row and its length to the
// device page tables, in stream order (two host-to-device copies; the
// host's data may change once they return).
void PagedKvCache::upload_row(const Sequence& s, std::size_t first_column) {
  const PagedTables t = tables();
  const auto row = static_cast<std::size_t>(s.row);
  if (first_column < s.pages.size()) {
    backend_->copy_host_to_device(&t.page(row, first_column), s.pages.data() + first_column,
                                  4 * (s.pages.size() - first_column), stream_);
  }
  const auto length = static_cast<std::int32_t>(s.length);
  backend_->copy_host_to_device(t.lengths + row, &length, 4, stream_);
}

Tensor PagedKvCache::block_table() const {
  return tables_.narrow(0, config_.max_sequences * row_capacity_).reshape({config_.max_sequences, row_capacity_});
}

std::size_t PagedKvCache::row_of(SequenceId id) const {
  return static_cast<std::size_t>(sequence_or_throw(id, "row_of").row);
}

void PagedKvCache::release(SequenceId id) {
  const auto found = sequences_.find(id);
  if (found == sequences_.end()) throw_unknown(id, "release");
  const Sequence& s = found->second;
  const std::size_t page_size = config_.page_size;
  for (std::size_t i = s.pages.size(); i-- > 0;) {
    if (pool_->release(s.pages[i])) tokens_ -= std::min(page_size, s.length - i * page_size);
  }
  free_rows_.push_back(s.row);  // within the capacity reserved at construction
  sequences_.erase(found);
}

std::size_t PagedKvCache::length(SequenceId id) const { return sequence_or_throw(id, "length").length; }

std::vector<std::int32_t> PagedKvCache::pages_of(SequenceId id) const {
  return sequence_or_throw(id, "pages_of").pages;
}

std::vector<std::size_t> PagedKvCache::positions(SequenceId id) const {
  return sequence_or_throw(id, "positions").positions.expand();
}

PagedKv PagedKvCache::gather(SequenceId id, std::size_t layer) const {
  const Sequence& s = sequence_or_throw(id, "gather");
  detail::require_index(layer, pages_.size(), "layer", "layers");
  const Shape shape{1, config_.kv_heads, s.length, config_.head_dim};
  PagedKv out{Tensor::empty(shape, config_.dtype, device_, stream_),
              Tensor::empty(shape, config_.dtype, device_, stream_)};
  if (s.length == 0) return out;
  const Tensor page_ids = Tensor::from_host_i32(s.pages, {s.pages.size()}, device_, stream_);
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
  return PagedSequenceStats{.tokens = s.length,
                            .pages = s.pages.size(),
                            .bytes = s.pages.size() * page_bytes_,
                            .slack = s.pages.size() * config_.page_size - s.length};
}

std::size_t PagedKvCache::memory_usage() const noexcept { return tokens_ * token_bytes_; }

std::size_t PagedKvCache::memory_reserved() const noexcept { return num_pages_ * page_bytes_ + tables_.nbytes(); }

}  // namespace micache
