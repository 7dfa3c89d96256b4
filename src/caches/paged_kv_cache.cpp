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
  pool_ = std::make_unique<detail::PagePool>(num_pages_);
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
  const std::size_t usable = prompt.empty() ? 0 : (prompt.size() - 1) / page_size;
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
  const SequenceId id{next_id_};
  const Sequence& added = sequences_.emplace(id, std::move(s)).first->second;
  ++next_id_;
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
  const Sequence& source = sequence_or_throw(parent, "fork");
  const SequenceId id{next_id_};
  const Sequence& child = sequences_.emplace(id, source).first->second;
  ++next_id_;
  for (const std::int32_t page : child.pages) pool_->retain(page);
  return id;
}

void PagedKvCache::release(SequenceId id) {
  const auto found = sequences_.find(id);
  if (found == sequences_.end()) throw_unknown(id, "release");
  const Sequence& s = found->second;
  const std::size_t page_size = config_.page_size;
  for (std::size_t i = s.pages.size(); i-- > 0;) {
    if (pool_->release(s.pages[i])) tokens_ -= std::min(page_size, s.length - i * page_size);
  }
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
  return PagedSequenceStats{.tokens = s.length, .pages = s.pages.size(), .bytes = s.pages.size() * page_bytes_};
}

std::size_t PagedKvCache::memory_usage() const noexcept { return tokens_ * token_bytes_; }

std::size_t PagedKvCache::memory_reserved() const noexcept { return num_pages_ * page_bytes_; }

}  // namespace micache
