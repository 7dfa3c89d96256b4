// Eviction policies: pure functions from a sequence's length, budgets and scores to the tokens it keeps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "micache/position_runs.hpp"

namespace micache {

/// How `KVCache::enforce_memory_limit` trims a cache that is over its byte budget.
enum class EvictionPolicy {
  /// candle-mi's rule: one trim to floor(3 * seq_len / 4) tokens; does nothing
  /// when that is 0, even if the cache stays over budget.
  ThreeQuarters,
  /// Keep the longest suffix of tokens whose bytes fit the budget (possibly 0).
  UntilUnderBudget,
};

/// The indices (0 = oldest) of the tokens a sequence keeps, ascending, as
/// ranges of consecutive indices. What every policy below returns and what a
/// cache's compaction takes: a suffix needs no byte moved (a ring's start
/// moves); other kept tokens are copied range by range (`ranges()`) or
/// gathered by index (`indices()`), and `ranges()` maps the positions
/// (PositionRuns::select).
class KeptTokens {
 public:
  /// Keeps no token.
  KeptTokens() = default;
  /// Keeps [begin, begin + count).
  static KeptTokens range(std::size_t begin, std::size_t count);

  /// Also keeps [begin, begin + count); count 0 changes nothing. Error: Shape
  /// when `begin` is not above the last kept index (unchanged).
  void add(std::size_t begin, std::size_t count) { ranges_.append(begin, count); }

  /// The number of kept tokens.
  std::size_t size() const noexcept { return ranges_.size(); }
  /// True when the kept tokens are the last size() of a sequence of `length`
  /// (keeping none is the empty suffix). Every index must be below `length`.
  bool is_suffix_of(std::size_t length) const noexcept;
  /// The kept indices as runs of consecutive indices (PositionRuns::select takes them).
  const PositionRuns& ranges() const noexcept { return ranges_; }
  /// Every kept index, as a device gather's int32 list. Error: Shape when an
  /// index exceeds the int32 range. O(size()).
  std::vector<std::int32_t> indices() const;

  bool operator==(const KeptTokens&) const = default;

 private:
  PositionRuns ranges_;
};

/// The policies. Each takes a sequence of `length` tokens (what a cache holds
/// for one layer or one sequence) and returns the tokens it keeps; keeping all
/// `length` means "nothing to evict" (the cache returns false and changes
/// nothing). None knows about any cache: KVCache calls them once for all its
/// layers (once per layer for heavy hitters), a paged cache once per sequence.
///
/// Adding a policy (SnapKV, TOVA, PyramidKV's per-layer budget, ...):
///  1. One function here returning KeptTokens from lengths, budgets and, for
///     a policy that ranks, the chosen indices: pure, no cache, no device.
///     Scores are ranked on the device first and only the chosen indices come
///     in (as `heavy_hitters` takes them): SnapKV ranks by attention pooled
///     over its observation window and keeps that window, TOVA ranks by the
///     current query's attention with no window; a per-layer budget
///     (PyramidKV) is the function called once per layer with that layer's budget.
///  2. Its test in tests/eviction_policy_test.cpp, one behaviour per test,
///     boundaries first (nothing to evict, budget 0, window 0).
///  3. The cache's method: validate, call the function, hand the KeptTokens to
///     the cache's one compaction, which moves the bytes and maps the
///     positions. No copy code of its own.
namespace eviction {

/// Keep the last `n` tokens (KVCache::trim_to). All when length <= n.
KeptTokens last(std::size_t length, std::size_t n);

/// candle-mi's 3/4 rule: the last floor(3 * length / 4) tokens; all (nothing
/// evicted) when that is 0, i.e. for length < 2.
KeptTokens three_quarters(std::size_t length);

/// The longest suffix whose bytes fit `max_bytes`, at `token_bytes` per token:
/// the last min(length, max_bytes / token_bytes) tokens (0 when the budget is
/// under one token). All when token_bytes is 0.
KeptTokens until_under_budget(std::size_t length, std::size_t token_bytes, std::size_t max_bytes);

/// `policy` applied to a sequence over budget (KVCache::enforce_memory_limit):
/// all when length * token_bytes <= max_bytes, else `three_quarters` or
/// `until_under_budget`.
KeptTokens for_budget(EvictionPolicy policy, std::size_t length, std::size_t token_bytes, std::size_t max_bytes);

/// StreamingLLM: the first `sinks` and the last `window` tokens. All when
/// length <= sinks + window (computed without overflow).
KeptTokens sinks_and_window(std::size_t length, std::size_t sinks, std::size_t window);

/// True when `heavy_hitters` would evict anything, i.e. length > heavy +
/// window (computed without overflow): only then must the caller rank scores.
bool heavy_hitters_evict(std::size_t length, std::size_t heavy, std::size_t window);

/// H2O: the `heavy` best-ranked older tokens and the last `window`. `chosen`
/// holds the ranking's choice, `heavy` distinct indices below length - window
/// in any order (the ranking, e.g. Backend::top_k_head_mean over the scores of
/// those older tokens, decides ties); they are kept in ascending order, then
/// the window. All (and `chosen` ignored) when !heavy_hitters_evict(length,
/// heavy, window). Error: Shape when `chosen` has another size, repeats an
/// index or holds one that is negative or not older than the window.
KeptTokens heavy_hitters(std::size_t length, std::size_t heavy, std::size_t window,
                         const std::vector<std::int32_t>& chosen);

}  // namespace eviction
}  // namespace micache
