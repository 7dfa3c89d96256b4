// GqaKvCache's and SlidingWindowKvCache's construction and the window's bookkeeping.
#include <fmt/format.h>

#include "micache/error.hpp"
#include "micache/gqa_kv_cache.hpp"
#include "src/caches/compressed_errors.hpp"

namespace micache {
namespace {

// `num_kv_heads` once the head counts of a GQA cache pass bitpolar's checks.
std::size_t validated_kv_heads(std::size_t num_kv_heads, std::size_t num_query_heads) {
  if (num_kv_heads == 0) throw Error(ErrorCode::EmptyInput, "empty input: num_kv_heads must be > 0");
  if (num_query_heads == 0) throw Error(ErrorCode::EmptyInput, "empty input: num_query_heads must be > 0");
  if (num_query_heads % num_kv_heads != 0) {
    throw detail::dimension_mismatch(
        num_kv_heads, num_query_heads % num_kv_heads,
        fmt::format("num_query_heads {} is not a multiple of num_kv_heads {}", num_query_heads, num_kv_heads));
  }
  return num_kv_heads;
}

// `num_kv_heads`, once `window_size` is checked (before the heads, as bitpolar).
std::size_t kv_heads_of_window(std::size_t num_kv_heads, std::size_t window_size) {
  if (window_size == 0) throw Error(ErrorCode::EmptyInput, "empty input: window_size must be > 0");
  return num_kv_heads;
}

}  // namespace

GqaKvCache::GqaKvCache(std::size_t num_kv_heads, std::size_t num_query_heads, const KvCacheConfig& config,
                       Device device, Stream stream)
    : CompressedCacheBase(validated_kv_heads(num_kv_heads, num_query_heads), config, device, stream),
      group_size_(num_query_heads / num_kv_heads) {}

SlidingWindowKvCache::SlidingWindowKvCache(std::size_t num_kv_heads, std::size_t num_query_heads,
                                           std::size_t window_size, const KvCacheConfig& config, Device device,
                                           Stream stream)
    : GqaKvCache(kv_heads_of_window(num_kv_heads, window_size), num_query_heads, config, device, stream),
      window_size_(window_size) {}

void SlidingWindowKvCache::push_token(const std::vector<std::vector<float>>& keys,
                                      const std::vector<std::vector<float>>& values) {
  GqaKvCache::push_token(keys, values);
  ++total_tokens_seen_;
  heads().keep_last(window_size_);
}

void SlidingWindowKvCache::restore(const Tensor& key_records, const Tensor& value_records,
                                   std::size_t total_tokens_seen) {
  const std::size_t tokens = key_records.rank() == 3 ? key_records.dim(1) : 0;
  if (tokens > window_size_ || total_tokens_seen < tokens) {
    throw Error(ErrorCode::Shape,
                fmt::format("{} tokens held, window {}, {} seen", tokens, window_size_, total_tokens_seen));
  }
  heads().assign_records(key_records, value_records);
  total_tokens_seen_ = total_tokens_seen;
}

}  // namespace micache
