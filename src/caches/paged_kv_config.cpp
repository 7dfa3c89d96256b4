// PagedKvConfig: field checks, overflow-safe byte counts, the pool size from a byte budget.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <string>

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

std::size_t PagedKvConfig::page_bytes() const {
  const std::size_t token = bytes_per_token();
  if (overflows(token, page_size)) {
    throw Error(ErrorCode::Config, fmt::format("PagedKvConfig: page_bytes (page_size {} x bytes_per_token {}) "
                                               "overflows size_t",
                                               page_size, token));
  }
  return page_size * token;
}

std::size_t PagedKvConfig::pages() const {
  if (num_pages != 0) return num_pages;
  const std::size_t page = page_bytes();
  return page == 0 ? 0 : max_bytes / page;
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
  const std::size_t count = pages();
  const std::size_t slots = overflows(count, page_size) ? kSizeMax : count * page_size;
  return std::min(slots, kDefaultMaxSequenceLen);
}

std::size_t PagedKvConfig::row_capacity() const { return (sequence_len() + page_size - 1) / page_size; }

std::size_t PagedKvConfig::table_bytes() const {
  const std::size_t columns = row_capacity() + 1;  // the block table's row, and the row's length
  if (overflows(columns, max_sequences) || overflows(columns * max_sequences, 4)) {
    throw Error(ErrorCode::Config,
                fmt::format("PagedKvConfig: table_bytes (max_sequences {} x (row_capacity {} + 1) x 4) overflows size_t",
                            max_sequences, row_capacity()));
  }
  return 4 * columns * max_sequences;
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
  if (max_sequences == 0 || max_sequences > detail::kInt32Max) {
    throw Error(ErrorCode::Config, fmt::format("PagedKvConfig.max_sequences must be in 1..={}, got {}",
                                               detail::kInt32Max, max_sequences));
  }
  if (max_sequence_len > detail::kInt32Max) {
    throw Error(ErrorCode::Config, fmt::format("PagedKvConfig.max_sequence_len must be <= {} (lengths are int32), got {}",
                                               detail::kInt32Max, max_sequence_len));
  }
  static_cast<void>(table_bytes());
}

}  // namespace micache
