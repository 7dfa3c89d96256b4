// PositionRuns: kept positions as runs of consecutive positions (append, first, without_first, select, checks).
#include "micache/position_runs.hpp"

#include <vector>

#include "test_support.hpp"

namespace micache::testing {
namespace {

using Runs = std::vector<PositionRuns::Run>;
using Positions = std::vector<std::size_t>;

// Positions 0..4, 10..12, 20.
PositionRuns three_runs() {
  PositionRuns runs;
  runs.append(0, 5);
  runs.append(10, 3);
  runs.append(20, 1);
  return runs;
}

TEST(PositionRuns, StartsEmpty) {
  const PositionRuns runs;
  EXPECT_TRUE(runs.empty());
  EXPECT_EQ(runs.size(), 0u);
  EXPECT_TRUE(runs.runs().empty());
  EXPECT_TRUE(runs.expand().empty());
}

TEST(PositionRuns, AppendAtTheEndExtendsTheLastRun) {
  PositionRuns runs;
  runs.append(3, 2);
  runs.append(5, 4);
  EXPECT_EQ(runs.runs(), (Runs{{3, 6}}));
  EXPECT_EQ(runs.size(), 6u);
}

TEST(PositionRuns, AppendAfterAGapStartsARun) {
  PositionRuns runs;
  runs.append(0, 2);
  runs.append(7, 1);
  EXPECT_EQ(runs.runs(), (Runs{{0, 2}, {7, 1}}));
  EXPECT_EQ(runs.expand(), (Positions{0, 1, 7}));
}

TEST(PositionRuns, AppendOfNothingChangesNothing) {
  PositionRuns runs = three_runs();
  runs.append(2, 0);  // even below the last position: nothing is added
  EXPECT_EQ(runs, three_runs());
}

TEST(PositionRuns, AppendBelowTheLastPositionIsRejectedAndChangesNothing) {
  PositionRuns runs = three_runs();
  expect_error([&] { runs.append(20, 1); }, ErrorCode::Shape,
               "PositionRuns::append: position 20 is not above the last position 20");
  EXPECT_EQ(runs, three_runs());
}

TEST(PositionRuns, FirstKeepsTheOldestPositions) {
  EXPECT_EQ(three_runs().first(6).expand(), (Positions{0, 1, 2, 3, 4, 10}));
  EXPECT_TRUE(three_runs().first(0).empty());
}

TEST(PositionRuns, FirstOfMoreThanSizeKeepsAll) { EXPECT_EQ(three_runs().first(100), three_runs()); }

TEST(PositionRuns, WithoutFirstDropsTheOldestPositions) {
  EXPECT_EQ(three_runs().without_first(6).expand(), (Positions{11, 12, 20}));
  EXPECT_EQ(three_runs().without_first(0), three_runs());
}

TEST(PositionRuns, WithoutFirstOfMoreThanSizeLeavesNone) { EXPECT_TRUE(three_runs().without_first(9).empty()); }

TEST(PositionRuns, SelectTakesThePositionsAtTheIndices) {
  PositionRuns indices;
  indices.append(1, 1);
  indices.append(4, 3);  // spans the first two runs
  indices.append(8, 1);
  const PositionRuns selected = three_runs().select(indices);
  EXPECT_EQ(selected.expand(), (Positions{1, 4, 10, 11, 20}));
  EXPECT_EQ(selected.runs(), (Runs{{1, 1}, {4, 1}, {10, 2}, {20, 1}}));
}

TEST(PositionRuns, SelectOfAllIndicesIsTheSame) {
  PositionRuns all;
  all.append(0, 9);
  EXPECT_EQ(three_runs().select(all), three_runs());
}

TEST(PositionRuns, SelectOfNoIndicesIsEmpty) { EXPECT_TRUE(three_runs().select(PositionRuns()).empty()); }

TEST(PositionRuns, SelectOfAnIndexOutOfRangeIsRejected) {
  PositionRuns indices;
  indices.append(8, 2);
  expect_error([&] { (void)three_runs().select(indices); }, ErrorCode::Shape,
               "PositionRuns::select: index 9 out of range for 9 positions");
}

TEST(PositionRuns, FrontIsTheFirstPosition) { EXPECT_EQ(three_runs().without_first(5).front(), 10u); }

TEST(PositionRuns, FrontOfNoPositionsIsRejected) {
  expect_error([] { (void)PositionRuns().front(); }, ErrorCode::Shape, "PositionRuns::front: no positions");
}

TEST(PositionRuns, FromIncreasingMergesConsecutivePositions) {
  const PositionRuns runs = PositionRuns::from_increasing({0, 1, 2, 3, 4, 10, 11, 12, 20}, 21, "layer 0");
  EXPECT_EQ(runs, three_runs());
}

TEST(PositionRuns, FromIncreasingRejectsARepeatedPosition) {
  expect_error(
      [] {
        (void)PositionRuns::from_increasing({1, 3, 3}, 10, "layer 2");
      },
      ErrorCode::Shape, "layer 2: positions must increase and stay below the next position 10; entry 2 is 3");
}

TEST(PositionRuns, FromIncreasingRejectsAPositionAtTheBound) {
  expect_error(
      [] {
        (void)PositionRuns::from_increasing({1, 10}, 10, "layer 0");
      },
      ErrorCode::Shape, "layer 0: positions must increase and stay below the next position 10; entry 1 is 10");
}

}  // namespace
}  // namespace micache::testing
