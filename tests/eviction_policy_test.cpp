// The eviction policies of eviction.hpp, each a pure function from lengths,
// budgets and chosen indices to KeptTokens, at their boundaries; and the
// device ranking that feeds heavy hitters their chosen indices.
#include <climits>
#include <limits>
#include <vector>

#include "micache/eviction.hpp"
#include "src/caches/score_ranking.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

using Indices = std::vector<std::size_t>;

Indices kept_indices(const KeptTokens& kept) { return kept.ranges().expand(); }

// ---- KeptTokens ----

TEST(KeptTokens, AddMergesAdjacentRanges) {
  KeptTokens kept = KeptTokens::range(0, 2);
  kept.add(2, 3);
  kept.add(7, 1);
  EXPECT_EQ(kept.ranges().runs(), (std::vector<PositionRuns::Run>{{0, 5}, {7, 1}}));
  EXPECT_EQ(kept.size(), 6u);
}

TEST(KeptTokens, AddBelowTheLastIndexIsRejected) {
  KeptTokens kept = KeptTokens::range(4, 2);
  EXPECT_THROW(kept.add(5, 1), Error);
  EXPECT_EQ(kept, KeptTokens::range(4, 2));
}

TEST(KeptTokens, OneRangeEndingAtTheLengthIsASuffix) {
  EXPECT_TRUE(KeptTokens::range(3, 7).is_suffix_of(10));
  EXPECT_FALSE(KeptTokens::range(3, 6).is_suffix_of(10));
}

TEST(KeptTokens, KeepingNothingIsTheEmptySuffix) { EXPECT_TRUE(KeptTokens().is_suffix_of(10)); }

TEST(KeptTokens, TwoRangesAreNoSuffix) {
  KeptTokens kept = KeptTokens::range(0, 1);
  kept.add(5, 5);
  EXPECT_FALSE(kept.is_suffix_of(10));
}

TEST(KeptTokens, IndicesExpandToInt32) {
  KeptTokens kept = KeptTokens::range(1, 2);
  kept.add(6, 1);
  EXPECT_EQ(kept.indices(), (std::vector<std::int32_t>{1, 2, 6}));
}

TEST(KeptTokens, IndicesBeyondInt32AreRejected) {
  const KeptTokens kept = KeptTokens::range(static_cast<std::size_t>(INT32_MAX), 2);
  expect_error([&] { (void)kept.indices(); }, ErrorCode::Shape, "KeptTokens: index 2147483648 exceeds the int32 range");
}

// ---- keep the last N (trim_to) ----

TEST(EvictionLast, KeepsTheLastN) { EXPECT_EQ(eviction::last(10, 3), KeptTokens::range(7, 3)); }

TEST(EvictionLast, KeepsAllWhenNIsAtLeastTheLength) {
  EXPECT_EQ(eviction::last(10, 10).size(), 10u);
  EXPECT_EQ(eviction::last(10, 100).size(), 10u);
}

TEST(EvictionLast, ZeroKeepsNothing) { EXPECT_EQ(eviction::last(10, 0).size(), 0u); }

// ---- the 3/4 rule ----

TEST(EvictionThreeQuarters, KeepsTheLastFloorOfThreeQuarters) {
  EXPECT_EQ(eviction::three_quarters(10), KeptTokens::range(3, 7));
  EXPECT_EQ(eviction::three_quarters(2048), KeptTokens::range(512, 1536));
}

TEST(EvictionThreeQuarters, OfOneTokenKeepsIt) { EXPECT_EQ(eviction::three_quarters(1), KeptTokens::range(0, 1)); }

TEST(EvictionThreeQuarters, OfTwoTokensKeepsOne) { EXPECT_EQ(eviction::three_quarters(2), KeptTokens::range(1, 1)); }

TEST(EvictionThreeQuarters, OfNothingKeepsNothing) { EXPECT_EQ(eviction::three_quarters(0).size(), 0u); }

// ---- until under budget ----

TEST(EvictionUntilUnderBudget, KeepsTheLongestSuffixThatFits) {
  EXPECT_EQ(eviction::until_under_budget(100, 64, 64 * 37 + 32), KeptTokens::range(63, 37));
}

TEST(EvictionUntilUnderBudget, BudgetZeroKeepsNothing) {
  EXPECT_EQ(eviction::until_under_budget(10, 64, 0).size(), 0u);
}

TEST(EvictionUntilUnderBudget, BudgetUnderOneTokenKeepsNothing) {
  EXPECT_EQ(eviction::until_under_budget(10, 64, 63).size(), 0u);
}

TEST(EvictionUntilUnderBudget, BudgetThatFitsAllKeepsAll) {
  EXPECT_EQ(eviction::until_under_budget(10, 64, 640).size(), 10u);
}

TEST(EvictionUntilUnderBudget, TokensOfNoBytesAreAllKept) {
  EXPECT_EQ(eviction::until_under_budget(10, 0, 0).size(), 10u);
}

// ---- a policy over a budget (enforce_memory_limit) ----

TEST(EvictionForBudget, UnderBudgetKeepsAll) {
  EXPECT_EQ(eviction::for_budget(EvictionPolicy::ThreeQuarters, 10, 64, 640).size(), 10u);
  EXPECT_EQ(eviction::for_budget(EvictionPolicy::UntilUnderBudget, 10, 64, 640).size(), 10u);
}

TEST(EvictionForBudget, ThreeQuartersTrimsOnceWhateverTheBudget) {
  EXPECT_EQ(eviction::for_budget(EvictionPolicy::ThreeQuarters, 10, 64, 0), KeptTokens::range(3, 7));
}

TEST(EvictionForBudget, UntilUnderBudgetKeepsWhatFits) {
  EXPECT_EQ(eviction::for_budget(EvictionPolicy::UntilUnderBudget, 10, 64, 639), KeptTokens::range(1, 9));
}

// ---- sinks + window (StreamingLLM) ----

TEST(EvictionSinksAndWindow, KeepsTheSinksAndTheLastWindow) {
  EXPECT_EQ(kept_indices(eviction::sinks_and_window(20, 4, 6)), (Indices{0, 1, 2, 3, 14, 15, 16, 17, 18, 19}));
}

TEST(EvictionSinksAndWindow, LengthOfSinksPlusWindowKeepsAll) {
  EXPECT_EQ(eviction::sinks_and_window(10, 4, 6).size(), 10u);
  EXPECT_EQ(eviction::sinks_and_window(9, 4, 6).size(), 9u);
}

TEST(EvictionSinksAndWindow, SinksPlusWindowBeyondSizeTKeepsAll) {
  const std::size_t huge = std::numeric_limits<std::size_t>::max();
  EXPECT_EQ(eviction::sinks_and_window(10, 5, huge).size(), 10u);
}

TEST(EvictionSinksAndWindow, NoSinksKeepsASuffix) {
  const KeptTokens kept = eviction::sinks_and_window(20, 0, 6);
  EXPECT_EQ(kept, KeptTokens::range(14, 6));
  EXPECT_TRUE(kept.is_suffix_of(20));
}

TEST(EvictionSinksAndWindow, WindowZeroKeepsOnlyTheSinks) {
  EXPECT_EQ(eviction::sinks_and_window(20, 3, 0), KeptTokens::range(0, 3));
}

TEST(EvictionSinksAndWindow, NoSinksAndWindowZeroKeepsNothing) {
  EXPECT_EQ(eviction::sinks_and_window(20, 0, 0).size(), 0u);
}

// ---- heavy hitters (H2O) ----

TEST(EvictionHeavyHitters, KeepsTheChosenAscendingThenTheWindow) {
  EXPECT_EQ(kept_indices(eviction::heavy_hitters(12, 3, 3, {7, 2, 5})), (Indices{2, 5, 7, 9, 10, 11}));
}

TEST(EvictionHeavyHitters, LengthOfHeavyPlusWindowKeepsAllAndIgnoresChosen) {
  EXPECT_FALSE(eviction::heavy_hitters_evict(6, 3, 3));
  EXPECT_EQ(eviction::heavy_hitters(6, 3, 3, {}).size(), 6u);
}

TEST(EvictionHeavyHitters, HeavyPlusWindowBeyondSizeTEvictsNothing) {
  EXPECT_FALSE(eviction::heavy_hitters_evict(10, 2, std::numeric_limits<std::size_t>::max()));
}

TEST(EvictionHeavyHitters, HeavyZeroKeepsTheWindowAsASuffix) {
  const KeptTokens kept = eviction::heavy_hitters(10, 0, 4, {});
  EXPECT_EQ(kept, KeptTokens::range(6, 4));
  EXPECT_TRUE(kept.is_suffix_of(10));
}

TEST(EvictionHeavyHitters, WindowZeroKeepsOnlyTheChosen) {
  EXPECT_EQ(kept_indices(eviction::heavy_hitters(10, 2, 0, {9, 0})), (Indices{0, 9}));
}

TEST(EvictionHeavyHitters, ChosenNextToTheWindowMergeIntoOneRange) {
  const KeptTokens kept = eviction::heavy_hitters(10, 2, 3, {6, 5});
  EXPECT_EQ(kept, KeptTokens::range(5, 5));
  EXPECT_TRUE(kept.is_suffix_of(10));
}

TEST(EvictionHeavyHitters, ChosenOfTheWrongCountAreRejected) {
  expect_error([] { (void)eviction::heavy_hitters(10, 2, 3, {1}); }, ErrorCode::Shape,
               "heavy_hitters: 1 chosen indices for 2 heavy hitters");
}

TEST(EvictionHeavyHitters, AChosenIndexInsideTheWindowIsRejected) {
  expect_error(
      [] {
        (void)eviction::heavy_hitters(10, 2, 3, {1, 7});
      },
      ErrorCode::Shape, "heavy_hitters: chosen index 7 repeats or is not in [0, 7)");
}

TEST(EvictionHeavyHitters, ARepeatedChosenIndexIsRejected) {
  expect_error(
      [] {
        (void)eviction::heavy_hitters(10, 2, 3, {4, 4});
      },
      ErrorCode::Shape, "heavy_hitters: chosen index 4 repeats or is not in [0, 7)");
}

TEST(EvictionHeavyHitters, ANegativeChosenIndexIsRejected) {
  expect_error(
      [] {
        (void)eviction::heavy_hitters(10, 2, 3, {-1, 4});
      },
      ErrorCode::Shape, "heavy_hitters: chosen index -1 repeats or is not in [0, 7)");
}

// ---- the ranking that chooses heavy hitters (on each device) ----

class ScoreRanking : public ::testing::TestWithParam<Device> {};

TEST_P(ScoreRanking, RanksOnlyTheCandidatesBestFirst) {
  const std::vector<float> scores{0.1f, 5.0f, 0.2f, 4.0f, 9.0f};  // the 9 is not a candidate
  const Tensor t = Tensor::from_host(scores, {5}, DType::F32, GetParam());
  EXPECT_EQ(detail::top_scored(t, 4, 2, Stream()), (std::vector<std::vector<std::int32_t>>{{1, 3}}));
}

TEST_P(ScoreRanking, TiesGoToTheOlderTokenAndNaNRanksLast) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> scores{nan, 1.0f, 2.0f, 1.0f, nan, 1.0f, 0.0f};
  const Tensor t = Tensor::from_host(scores, {7}, DType::F32, GetParam());
  EXPECT_EQ(detail::top_scored(t, 7, 4, Stream()), (std::vector<std::vector<std::int32_t>>{{2, 1, 3, 5}}));
}

TEST_P(ScoreRanking, RanksEachRowOfATwoDimensionalScore) {
  const std::vector<float> scores{9, 0, 0, 0,   // row 0
                                  0, 0, 9, 0};  // row 1
  const Tensor t = Tensor::from_host(scores, {2, 4}, DType::F32, GetParam());
  EXPECT_EQ(detail::top_scored(t, 4, 1, Stream()), (std::vector<std::vector<std::int32_t>>{{0}, {2}}));
}

TEST_P(ScoreRanking, ChoosingNoneGivesEmptyRows) {
  const Tensor t = Tensor::from_host(std::vector<float>(8, 1.0f), {2, 4}, DType::F32, GetParam());
  EXPECT_EQ(detail::top_scored(t, 4, 0, Stream()), (std::vector<std::vector<std::int32_t>>{{}, {}}));
}

INSTANTIATE_TEST_SUITE_P(Backends, ScoreRanking, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
