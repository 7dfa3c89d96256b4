// PositionRuns: a strictly increasing list of positions, stored as runs of consecutive values.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace micache {

/// The original positions of a sequence's kept tokens, oldest first, as runs
/// of consecutive positions: a cache that only appends and trims holds one
/// run; every eviction that keeps tokens apart adds one run per gap. The
/// positions strictly increase (each operation keeps them so or throws).
///
/// A value type, independent of any cache: KVCache keeps one per layer, a
/// paged cache one per sequence. Costs are in runs (R), not positions, except
/// `expand` and `from_increasing`, which are linear in the positions.
class PositionRuns {
 public:
  /// Positions [begin, begin + length).
  struct Run {
    std::size_t begin = 0;
    std::size_t length = 0;
    bool operator==(const Run&) const = default;
  };

  /// No positions.
  PositionRuns() = default;

  /// The runs of `positions`, which must strictly increase and stay below
  /// `bound`. Error: Shape `"{what}: positions must increase and stay below
  /// the next position {bound}; entry {i} is {p}"` for the first entry that
  /// does not. O(positions).
  static PositionRuns from_increasing(const std::vector<std::size_t>& positions, std::size_t bound,
                                      std::string_view what);

  /// Appends positions [begin, begin + length), extending the last run when it
  /// ends at `begin`; length 0 changes nothing. Error: Shape when `begin` is
  /// not above the last position (unchanged). O(1) amortised.
  void append(std::size_t begin, std::size_t length);

  /// The first `count` positions (all of them when count >= size()). O(R).
  PositionRuns first(std::size_t count) const;

  /// Without the first `count` positions (none left when count >= size()). O(R).
  PositionRuns without_first(std::size_t count) const;

  /// The positions at the ascending `indices` (themselves given as runs of
  /// consecutive indices, e.g. KeptTokens::ranges), in order. Error: Shape
  /// when an index is >= size(). O(R + runs of `indices` + runs of the result).
  PositionRuns select(const PositionRuns& indices) const;

  /// Every position, in order. O(size()).
  std::vector<std::size_t> expand() const;

  /// The first position. Error: Shape when empty.
  std::size_t front() const;

  /// The number of positions.
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  /// The runs, oldest first; no run is empty and no two are adjacent.
  const std::vector<Run>& runs() const noexcept { return runs_; }

  bool operator==(const PositionRuns&) const = default;

 private:
  std::vector<Run> runs_;
  std::size_t size_ = 0;
};

}  // namespace micache
