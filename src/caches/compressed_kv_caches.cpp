#include <fmt/format.h>

#include "micache/error.hpp"
#include "micache/gqa_kv_cache.hpp"
#include "micache/kv_cache_compressor.hpp"
#include "src/caches/host_rows.hpp"

namespace micache {
namespace {

// `num_kv_heads` once the head counts of a GQA cache pass bitpolar's checks.
std::size_t validated_kv_heads(std::size_t num_kv_heads, std::size_t num_query_heads) {
  if (num_kv_heads == 0) throw Error(ErrorCode::EmptyInput, "empty input: num_kv_heads must be > 0");
  if (num_query_heads == 0) throw Error(ErrorCode::EmptyInput, "empty input: num_query_heads must be > 0");
  if (num_query_heads % num_kv_heads != 0) {
    throw Error(ErrorCode::DimensionMismatch,
                fmt::format("dimension mismatch: quantizer expects {}, got {} (num_query_heads {} is not a multiple "
                            "of num_kv_heads {})",
                            num_kv_heads, num_query_heads % num_kv_heads, num_query_heads, num_kv_heads));
  }
  return num_kv_heads;
}

std::size_t positive_window(std::size_t window_size) {
  if (window_size == 0) throw Error(ErrorCode::EmptyInput, "empty input: window_size must be > 0");
  return window_size;
}

}  // namespace

std::vector<float> KvHeadView::attention_scores(const std::vector<float>& query) const {
  return heads_->head_scores(head_, query);
}

std::vector<std::vector<float>> KvHeadView::decode_keys() const {
  return detail::host_rows(heads_->decode_keys(head_));
}

std::vector<std::vector<float>> KvHeadView::decode_values() const {
  return detail::host_rows(heads_->decode_values(head_));
}

GqaKvCache::GqaKvCache(std::size_t num_kv_heads, std::size_t num_query_heads, const KvCacheConfig& config,
                       Device device, Stream stream)
    : CompressedCacheBase(validated_kv_heads(num_kv_heads, num_query_heads), config, device, stream, "GqaKvCache"),
      group_size_(num_query_heads / num_kv_heads) {}

SlidingWindowKvCache::SlidingWindowKvCache(std::size_t num_kv_heads, std::size_t num_query_heads,
                                           std::size_t window_size, const KvCacheConfig& config, Device device,
                                           Stream stream)
    : window_size_(positive_window(window_size)), cache_(num_kv_heads, num_query_heads, config, device, stream) {}

void SlidingWindowKvCache::push_token(const std::vector<std::vector<float>>& keys,
                                      const std::vector<std::vector<float>>& values) {
  cache_.push_token(keys, values);
  ++total_tokens_seen_;
  cache_.heads().keep_last(window_size_);
}

}  // namespace micache
