#include "micache/eviction.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>

#include "micache/error.hpp"

namespace micache {

KeptTokens KeptTokens::range(std::size_t begin, std::size_t count) {
  KeptTokens kept;
  kept.add(begin, count);
  return kept;
}

bool KeptTokens::is_suffix_of(std::size_t length) const noexcept {
  const std::vector<PositionRuns::Run>& runs = ranges_.runs();
  return runs.empty() || (runs.size() == 1 && runs.front().begin + runs.front().length == length);
}

std::vector<std::int32_t> KeptTokens::indices() const {
  const std::vector<std::size_t> all = ranges_.expand();
  if (!all.empty() && all.back() > static_cast<std::size_t>(INT32_MAX)) {
    throw Error(ErrorCode::Shape, fmt::format("KeptTokens: index {} exceeds the int32 range", all.back()));
  }
  return {all.begin(), all.end()};
}

namespace eviction {

KeptTokens last(std::size_t length, std::size_t n) {
  const std::size_t keep = std::min(length, n);
  return KeptTokens::range(length - keep, keep);
}

KeptTokens three_quarters(std::size_t length) {
  const std::size_t keep = length * 3 / 4;
  return last(length, keep == 0 ? length : keep);
}

KeptTokens until_under_budget(std::size_t length, std::size_t token_bytes, std::size_t max_bytes) {
  return last(length, token_bytes == 0 ? length : max_bytes / token_bytes);
}

KeptTokens for_budget(EvictionPolicy policy, std::size_t length, std::size_t token_bytes, std::size_t max_bytes) {
  if (token_bytes == 0 || length <= max_bytes / token_bytes) return last(length, length);
  return policy == EvictionPolicy::ThreeQuarters ? three_quarters(length)
                                                 : until_under_budget(length, token_bytes, max_bytes);
}

KeptTokens sinks_and_window(std::size_t length, std::size_t sinks, std::size_t window) {
  if (length <= sinks || length - sinks <= window) return last(length, length);
  KeptTokens kept = KeptTokens::range(0, sinks);
  kept.add(length - window, window);
  return kept;
}

bool heavy_hitters_evict(std::size_t length, std::size_t heavy, std::size_t window) {
  return length > heavy && length - heavy > window;
}

KeptTokens heavy_hitters(std::size_t length, std::size_t heavy, std::size_t window,
                         const std::vector<std::int32_t>& chosen) {
  if (!heavy_hitters_evict(length, heavy, window)) return last(length, length);
  const std::size_t older = length - window;
  if (chosen.size() != heavy) {
    throw Error(ErrorCode::Shape,
                fmt::format("heavy_hitters: {} chosen indices for {} heavy hitters", chosen.size(), heavy));
  }
  std::vector<std::int32_t> ascending = chosen;
  std::sort(ascending.begin(), ascending.end());
  KeptTokens kept;
  for (std::size_t i = 0; i < ascending.size(); ++i) {
    const std::int32_t index = ascending[i];
    if (index < 0 || static_cast<std::size_t>(index) >= older || (i != 0 && index == ascending[i - 1])) {
      throw Error(ErrorCode::Shape,
                  fmt::format("heavy_hitters: chosen index {} repeats or is not in [0, {})", index, older));
    }
    kept.add(static_cast<std::size_t>(index), 1);
  }
  kept.add(older, window);
  return kept;
}

}  // namespace eviction
}  // namespace micache
