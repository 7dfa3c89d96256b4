// PagedKvConfig: field checks, overflow-safe byte counts, the pool size from a byte budget.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "micache/error.hpp"
#include "micache/paged_kv_cache.hpp"
#include "src/caches/page_pool.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

constexpr std::size_t kMaxPageSize = std::size_t{1} << 30;
constexpr std::size_t kSizeMax = std::numeric_limits<std::size_t>::max();

bool overflows(std::size_t a, std::size_t b) { return b != 0 && a > kSizeMax / b; }

void require_positive(std::size_t value, const char* field) {
  if (value == 0) throw Error(ErrorCode::Config, fmt::format("PagedKvConfig.{} must be >= 1, got 0", field));
}

}  // namespace

bool PagedLayerGroups::has_windows() const noexcept {
  return std::any_of(group_kinds.begin(), group_kinds.end(), [](const PagedLayerKind& k) { return !k.is_full(); });
}

PagedLayerKind PagedKvConfig::kind_of(std::size_t layer) const {
  if (layer >= n_layers) {
    throw Error(ErrorCode::Hook, fmt::format("layer {} out of range (layers={})", layer, n_layers));
  }
  return layer_kinds.empty() ? PagedLayerKind::full() : layer_kinds[layer];
}

PagedLayerGroups PagedKvConfig::layer_groups() const {
  std::vector<PagedLayerKind> kinds;  // in order of first appearance
  std::vector<std::vector<std::size_t>> members;
  for (std::size_t l = 0; l < n_layers; ++l) {
    const PagedLayerKind kind = kind_of(l);
    const auto found = std::find(kinds.begin(), kinds.end(), kind);
    if (found == kinds.end()) {
      kinds.push_back(kind);
      members.emplace_back();
    }
    members[static_cast<std::size_t>(std::find(kinds.begin(), kinds.end(), kind) - kinds.begin())].push_back(l);
  }
  PagedLayerGroups g;
  g.layer_group.resize(n_layers);
  g.layer_slot.resize(n_layers);
  if (n_layers == 0) return g;
  g.group_size = n_layers;
  for (const auto& layers : members) g.group_size = std::min(g.group_size, layers.size());
  for (std::size_t k = 0; k < kinds.size(); ++k) {
    for (std::size_t i = 0; i < members[k].size(); ++i) {
      if (i % g.group_size == 0) g.group_kinds.push_back(kinds[k]);
      g.layer_group[members[k][i]] = g.group_kinds.size() - 1;
      g.layer_slot[members[k][i]] = i % g.group_size;
    }
  }
  return g;
}

std::size_t PagedKvConfig::bytes_per_token() const {
  std::size_t bytes = 2 * dtype_size(dtype);
  for (const std::size_t factor : {n_layers, kv_heads, head_dim}) {
    if (overflows(bytes, factor)) {
      throw Error(ErrorCode::Config,
                  fmt::format("PagedKvConfig: bytes_per_token (2 x n_layers {} x kv_heads {} x head_dim {} x {} "
                              "bytes) overflows size_t",
                              n_layers, kv_heads, head_dim, dtype_size(dtype)));
    }
    bytes *= factor;
  }
  return bytes;
}

std::size_t PagedKvConfig::slot_bytes() const {
  const std::size_t token = bytes_per_token();  // n_layers x the bytes of one layer: group_size x them fits too
  return n_layers == 0 ? token : token / n_layers * layer_groups().group_size;
}

std::size_t PagedKvConfig::page_bytes() const {
  const std::size_t slot = slot_bytes();
  if (overflows(slot, page_size)) {
    throw Error(
        ErrorCode::Config,
        fmt::format("PagedKvConfig: page_bytes (page_size {} x slot_bytes {}) overflows size_t", page_size, slot));
  }
  return page_size * slot;
}

std::size_t PagedKvConfig::storage_page_bytes() const noexcept {
  return 2 * page_size * kv_heads * head_dim * dtype_size(dtype);
}

std::size_t PagedKvConfig::pages() const {
  if (num_pages != 0) return num_pages;
  const std::size_t page = page_bytes();
  return page == 0 ? 0 : max_bytes / page;
}

std::size_t PagedKvConfig::pool_pages() const {
  const std::size_t count = pages();
  return count > 0 && layer_groups().has_windows() ? count - 1 : count;
}

std::size_t PagedKvConfig::reserved_bytes() const {
  const std::size_t page = page_bytes();
  const std::size_t count = pages();
  if (overflows(page, count)) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig: reserved_bytes (pages {} x page_bytes {}) overflows size_t", count, page));
  }
  return page * count;
}

std::size_t PagedKvConfig::sequence_len() const {
  if (max_sequence_len != 0) return max_sequence_len;
  const std::size_t count = pool_pages();
  const std::size_t slots = overflows(count, page_size) ? kSizeMax : count * page_size;
  return std::min(slots, kDefaultMaxSequenceLen);
}

std::size_t PagedKvConfig::row_capacity() const { return (sequence_len() + page_size - 1) / page_size; }

std::size_t PagedKvConfig::table_bytes() const {
  const std::size_t columns = row_capacity() + 1;  // the block table's row, and the row's length
  const std::size_t groups = layer_groups().groups();
  if (overflows(columns, max_sequences) || overflows(columns * max_sequences, groups) ||
      overflows(columns * max_sequences * groups, 4)) {
    throw Error(ErrorCode::Config, fmt::format("PagedKvConfig: table_bytes (groups {} x max_sequences {} x "
                                               "(row_capacity {} + 1) x 4) overflows size_t",
                                               groups, max_sequences, row_capacity()));
  }
  return 4 * columns * max_sequences * groups;
}

void PagedKvConfig::validate() const {
  require_positive(n_layers, "n_layers");
  require_positive(kv_heads, "kv_heads");
  require_positive(head_dim, "head_dim");
  if (page_size == 0 || page_size > kMaxPageSize || (page_size & (page_size - 1)) != 0) {
    throw Error(ErrorCode::Config, fmt::format("PagedKvConfig.page_size must be a power of two in 1..={}, got {}",
                                               kMaxPageSize, page_size));
  }
  detail::require_float_dtype(dtype, "PagedKvConfig.dtype");
  if (layout != PagedLayout::Nhd && layout != PagedLayout::Hnd) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig.layout must be Nhd or Hnd, got {}", static_cast<unsigned>(layout)));
  }
  if (!layer_kinds.empty() && layer_kinds.size() != n_layers) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig.layer_kinds has {} entries for {} layers", layer_kinds.size(), n_layers));
  }
  for (std::size_t l = 0; l < layer_kinds.size(); ++l) {
    if (layer_kinds[l].is_full() && layer_kinds[l].sinks != 0) {
      throw Error(ErrorCode::Config,
                  fmt::format("PagedKvConfig.layer_kinds[{}] has {} sinks and no window", l, layer_kinds[l].sinks));
    }
  }
  if ((num_pages == 0) == (max_bytes == 0)) {
    throw Error(ErrorCode::Config,
                num_pages == 0 ? std::string("PagedKvConfig: set num_pages or max_bytes, got neither")
                               : fmt::format("PagedKvConfig: set num_pages or max_bytes, got both (num_pages={}, "
                                             "max_bytes={})",
                                             num_pages, max_bytes));
  }
  const std::size_t page = page_bytes();
  if (num_pages == 0 && max_bytes < page) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig.max_bytes {} is below one page ({} bytes)", max_bytes, page));
  }
  if (pages() > detail::kInt32Max) {
    throw Error(ErrorCode::Config, fmt::format("PagedKvConfig.num_pages must be <= {} (kv_indices are int32), got {}",
                                               detail::kInt32Max, pages()));
  }
  static_cast<void>(reserved_bytes());
  if (pages() < 2 && layer_groups().has_windows()) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig: a cache with window layers needs 2 pages or more (one is the null page), "
                            "got {}",
                            pages()));
  }
  if (max_sequences == 0 || max_sequences > detail::kInt32Max) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig.max_sequences must be in 1..={}, got {}", detail::kInt32Max, max_sequences));
  }
  if (max_sequence_len > detail::kInt32Max) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig.max_sequence_len must be <= {} (lengths are int32), got {}",
                            detail::kInt32Max, max_sequence_len));
  }
  static_cast<void>(table_bytes());
}

}  // namespace micache
