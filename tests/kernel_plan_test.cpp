// The CUDA kernels' decompositions, proved on the host: each test runs the
// same host/device functions a kernel runs (cuda/*_plan.hpp, cuda/grid.hpp,
// cuda/row_split.hpp, cuda/fast_divmod.hpp, detail/parallel_record.hpp) for
// every block and thread of a launch, at small, boundary and large sizes,
// and checks that every output is written exactly once, every read stays in
// its buffer, and the parallel steps give the sequential functions' bits.
// No GPU needed: this is what the first GPU run confirms rather than discovers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda/fast_divmod.hpp"
#include "cuda/grid.hpp"
#include "cuda/paged_kv_plan.hpp"
#include "cuda/paged_tables_plan.hpp"
#include "cuda/radix_select.hpp"
#include "cuda/record_plan.hpp"
#include "cuda/row_split.hpp"
#include "cuda/token_copy_plan.hpp"
#include "micache/backend/detail/attend_split.hpp"
#include "micache/backend/detail/parallel_record.hpp"
#include "micache/backend/detail/record_codec.hpp"
#include "micache/backend/detail/record_layout.hpp"
#include "micache/backend/detail/rotation.hpp"
#include "micache/backend/detail/rounding.hpp"
#include "micache/backend/detail/top_k_key.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

using cuda::FastDivmod;

// ---- grid sizing ----

TEST(GridBlocks, CoversEveryItemWithinTheCap) {
  EXPECT_EQ(cuda::grid_blocks(0, 256), 1u);
  EXPECT_EQ(cuda::grid_blocks(1, 256), 1u);
  EXPECT_EQ(cuda::grid_blocks(256, 256), 1u);
  EXPECT_EQ(cuda::grid_blocks(257, 256), 2u);
  EXPECT_EQ(cuda::grid_blocks(std::size_t{1} << 40, 128), cuda::kMaxGridBlocks);
  EXPECT_EQ(cuda::grid_blocks(100000, 1, cuda::kMaxGridY), cuda::kMaxGridY);
}

TEST(GridBlocks, CappedGridsLeaveWorkThatOnlyAGridStrideLoopReaches) {
  // 2^28 tokens of one head at 128 tokens per block need 2^21 blocks: the
  // capped grid covers half, so every capped kernel must loop.
  const std::size_t tokens = std::size_t{1} << 28;
  EXPECT_LT(std::size_t{cuda::grid_blocks(tokens, 128)} * 128, tokens);
}

// ---- FastDivmod ----

TEST(FastDivmod, QuotientAndRemainderAreExactForEveryDivisorShape) {
  const std::vector<std::uint32_t> divisors = {
      1, 2, 3, 5, 7, 17, 19, 25, 31, 32, 33, 100, 255, 4097, 1u << 31, (1u << 31) + 1, 0xfffffffeu, 0xffffffffu};
  std::vector<std::uint32_t> numerators = {0,    1,           2,           31,          32,         33,
                                           1000, 0x7fffffffu, 0x80000000u, 0xfffffffeu, 0xffffffffu};
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) numerators.push_back(static_cast<std::uint32_t>(rng()));
  for (const std::uint32_t d : divisors) {
    const FastDivmod fast(d);
    for (const std::uint32_t n : numerators) {
      std::uint32_t q = 0;
      std::uint32_t r = 0;
      fast.divmod(n, q, r);
      ASSERT_EQ(q, n / d) << n << " / " << d;
      ASSERT_EQ(r, n % d) << n << " % " << d;
    }
    for (std::uint32_t m = 1; m < 64; ++m) {  // around multiples of d
      const std::uint64_t around = std::uint64_t{d} * m;
      for (std::uint64_t n = around > 0 ? around - 1 : 0; n <= around + 1 && n <= 0xffffffffu; ++n) {
        ASSERT_EQ(fast.div(static_cast<std::uint32_t>(n)), static_cast<std::uint32_t>(n / d)) << n << " / " << d;
      }
    }
  }
}

// ---- copy_tokens ----

struct CopyCase {
  const char* name;
  std::size_t buffers, planes, tokens, units, src_capacity, src_start, dst_capacity, dst_start;
  bool gather;
  unsigned token_blocks_cap, pair_blocks_cap;  // 0 = the launcher's plan
};

// Runs copy_tokens_thread for every block and thread of `launch` and checks
// each destination unit is written once, from the unit the TokenCopy
// contract names, with every index inside its buffer.
void walk_copy(const CopyCase& c) {
  std::vector<std::int32_t> gather(c.tokens);
  for (std::size_t t = 0; t < c.tokens; ++t) gather[t] = static_cast<std::int32_t>((t * 7 + 3) % c.src_capacity);
  TokenCopy copy;
  copy.buffers = c.buffers;
  copy.planes = c.planes;
  copy.tokens = c.tokens;
  copy.token_bytes = c.units * 16;
  copy.src_capacity = c.src_capacity;
  copy.src_start = c.src_start % c.src_capacity;
  copy.dst_capacity = c.dst_capacity;
  copy.dst_start = c.dst_start % c.dst_capacity;
  copy.src_tokens = c.gather ? gather.data() : nullptr;
  cuda::CopyTokensLaunch launch = cuda::plan_copy_tokens(copy, c.units);
  if (c.token_blocks_cap != 0) launch.token_blocks = std::min(launch.token_blocks, c.token_blocks_cap);
  if (c.pair_blocks_cap != 0) launch.pair_blocks = std::min(launch.pair_blocks, c.pair_blocks_cap);
  ASSERT_EQ(launch.unit_threads * launch.token_threads <= cuda::kCopyBlockThreads, true);

  const std::size_t dst_units = c.planes * c.dst_capacity * c.units;
  const std::size_t src_units = c.planes * c.src_capacity * c.units;
  std::vector<std::vector<std::int64_t>> written(c.buffers, std::vector<std::int64_t>(dst_units, -1));
  std::size_t moves = 0;
  for (unsigned by = 0; by < launch.pair_blocks; ++by) {
    for (unsigned bx = 0; bx < launch.token_blocks; ++bx) {
      for (unsigned ty = 0; ty < launch.token_threads; ++ty) {
        for (unsigned tx = 0; tx < launch.unit_threads; ++tx) {
          cuda::copy_tokens_thread(copy, c.units, launch, bx, by, tx, ty,
                                   [&](std::size_t buffer, std::size_t dst, std::size_t src) {
                                     ASSERT_LT(buffer, c.buffers);
                                     ASSERT_LT(dst, dst_units);
                                     ASSERT_LT(src, src_units);
                                     ASSERT_EQ(written[buffer][dst], -1) << "unit written twice";
                                     written[buffer][dst] = static_cast<std::int64_t>(src);
                                     ++moves;
                                   });
        }
      }
    }
  }
  ASSERT_EQ(moves, c.buffers * c.planes * c.tokens * c.units);
  for (std::size_t b = 0; b < c.buffers; ++b) {
    for (std::size_t p = 0; p < c.planes; ++p) {
      for (std::size_t t = 0; t < c.tokens; ++t) {
        const std::size_t logical = c.gather ? static_cast<std::size_t>(gather[t]) : t;
        const std::size_t s = p * c.src_capacity + (c.src_start + logical) % c.src_capacity;
        const std::size_t d = p * c.dst_capacity + (c.dst_start + t) % c.dst_capacity;
        for (std::size_t u = 0; u < c.units; ++u) {
          ASSERT_EQ(written[b][d * c.units + u], static_cast<std::int64_t>(s * c.units + u))
              << "buffer " << b << " plane " << p << " token " << t << " unit " << u;
        }
      }
    }
  }
}

class CopyTokensPlan : public ::testing::TestWithParam<CopyCase> {};

TEST_P(CopyTokensPlan, WritesEveryDestinationUnitOnceFromItsSource) { walk_copy(GetParam()); }

INSTANTIATE_TEST_SUITE_P(
    Shapes, CopyTokensPlan,
    ::testing::Values(CopyCase{"one_unit_one_token", 1, 1, 1, 1, 4, 0, 4, 0, false, 0, 0},
                      CopyCase{"decode_append_wraps", 2, 8, 1, 16, 64, 63, 64, 63, false, 0, 0},
                      CopyCase{"both_rings_wrap", 2, 3, 50, 4, 64, 40, 70, 60, false, 0, 0},
                      CopyCase{"units_not_a_power_of_two", 1, 4, 33, 10, 40, 5, 33, 0, false, 0, 0},
                      CopyCase{"units_above_the_block", 1, 2, 5, 300, 8, 6, 5, 2, false, 0, 0},
                      CopyCase{"gather", 2, 4, 37, 8, 50, 13, 37, 0, true, 0, 0},
                      CopyCase{"grid_stride_over_tokens_and_pairs", 2, 7, 200, 2, 256, 100, 300, 250, false, 2, 3},
                      CopyCase{"start_equal_to_capacity_reduces", 1, 1, 4, 1, 8, 8, 8, 16, false, 0, 0}),
    [](const ::testing::TestParamInfo<CopyCase>& param) { return std::string(param.param.name); });

TEST(CopyTokensPlan, RingSlotWrapsWithOneSubtraction) {
  EXPECT_EQ(cuda::ring_slot(0, 0, 8), 0u);
  EXPECT_EQ(cuda::ring_slot(7, 0, 8), 7u);
  EXPECT_EQ(cuda::ring_slot(7, 1, 8), 0u);
  EXPECT_EQ(cuda::ring_slot(7, 7, 8), 6u);
}

// ---- paged_write and paged_gather ----

struct PagedPlanCase {
  const char* name;
  PagedLayout layout;
  DType dtype;
  std::size_t head_dim, kv_heads, page_size, num_pages, tokens;
  std::size_t stride_pad;                      // elements added to a write's token stride
  std::uintptr_t misalign;                     // bytes added to the inputs' (write) or outputs' (gather) addresses
  unsigned token_blocks_cap, pair_blocks_cap;  // 0 = the launcher's plan
};

std::string paged_plan_name(const ::testing::TestParamInfo<PagedPlanCase>& param) { return param.param.name; }

PagedPages plan_pages(const PagedPlanCase& c) {
  PagedPages pages;
  pages.data = reinterpret_cast<void*>(std::uintptr_t{1} << 20);  // never dereferenced: the walk records indices
  pages.dtype = c.dtype;
  pages.layout = c.layout;
  pages.num_pages = c.num_pages;
  pages.page_size = c.page_size;
  pages.kv_heads = c.kv_heads;
  pages.head_dim = c.head_dim;
  return pages;
}

// Byte `b` of row (kind, head) of the token in slot `slot`, from the pages' base.
std::size_t page_byte(const PagedPlanCase& c, std::size_t slot, std::size_t kind, std::size_t head, std::size_t b) {
  const std::size_t page = slot / c.page_size;
  const std::size_t offset = slot % c.page_size;
  const std::size_t row = c.layout == PagedLayout::Nhd ? ((page * 2 + kind) * c.page_size + offset) * c.kv_heads + head
                                                       : ((page * 2 + kind) * c.kv_heads + head) * c.page_size + offset;
  return row * c.head_dim * dtype_size(c.dtype) + b;
}

cuda::PagedLaunch capped(cuda::PagedLaunch launch, const PagedPlanCase& c) {
  if (c.token_blocks_cap != 0) launch.token_blocks = std::min(launch.token_blocks, c.token_blocks_cap);
  if (c.pair_blocks_cap != 0) launch.pair_blocks = std::min(launch.pair_blocks, c.pair_blocks_cap);
  return launch;
}

// Calls `thread(bx, by, tx, ty)` for every block and thread of `launch`.
template <class Thread>
void every_thread(const cuda::PagedLaunch& launch, Thread&& thread) {
  ASSERT_LE(launch.unit_threads * launch.token_threads, cuda::kPagedBlockThreads);
  for (unsigned by = 0; by < launch.pair_blocks; ++by) {
    for (unsigned bx = 0; bx < launch.token_blocks; ++bx) {
      for (unsigned ty = 0; ty < launch.token_threads; ++ty) {
        for (unsigned tx = 0; tx < launch.unit_threads; ++tx) thread(bx, by, tx, ty);
      }
    }
  }
}

// Runs paged_write_thread for every block and thread of the launch over
// distinct shuffled slots (every third negative, the pool's last slot among
// them) and checks each page word of a written row is written once, from the
// input word PagedWrite names, and no other page word is written.
void walk_paged_write(const PagedPlanCase& c) {
  const std::size_t element = dtype_size(c.dtype);
  const std::size_t slots = c.num_pages * c.page_size;
  std::vector<std::int64_t> slot_mapping(slots);
  std::iota(slot_mapping.begin(), slot_mapping.end(), std::int64_t{0});
  std::shuffle(slot_mapping.begin(), slot_mapping.end(), std::mt19937(11));
  std::iter_swap(slot_mapping.begin(),
                 std::find(slot_mapping.begin(), slot_mapping.end(), static_cast<std::int64_t>(slots - 1)));
  ASSERT_LE(c.tokens, slots);
  slot_mapping.resize(c.tokens);
  for (std::size_t t = 2; t < c.tokens; t += 3) slot_mapping[t] = -1 - static_cast<std::int64_t>(t);
  PagedWrite write;
  write.pages = plan_pages(c);
  write.keys = reinterpret_cast<const void*>((std::uintptr_t{1} << 30) + c.misalign);
  write.values = reinterpret_cast<const void*>((std::uintptr_t{1} << 31) + c.misalign);
  write.token_stride = c.kv_heads * c.head_dim + c.stride_pad;
  write.tokens = c.tokens;
  write.slot_mapping = slot_mapping.data();
  const std::size_t unit = cuda::paged_write_unit(write);
  const cuda::PagedLaunch launch = capped(cuda::plan_paged(write.pages, c.tokens, write.token_stride, unit), c);
  ASSERT_EQ(launch.units * unit, c.head_dim * element);

  const std::size_t page_words = slots * 2 * c.kv_heads * c.head_dim * element / unit;
  const std::size_t input_words = c.tokens * write.token_stride * element / unit;
  std::vector<std::int64_t> written(page_words, -1);  // kind * input_words + input word
  every_thread(launch, [&](unsigned bx, unsigned by, unsigned tx, unsigned ty) {
    cuda::paged_write_thread(write, launch, bx, by, tx, ty, [&](std::size_t kind, std::size_t dst, std::size_t src) {
      ASSERT_LT(kind, 2u);
      ASSERT_LT(dst, page_words);
      ASSERT_LT(src, input_words);
      ASSERT_EQ(written[dst], -1) << "page word written twice";
      written[dst] = static_cast<std::int64_t>(kind * input_words + src);
    });
  });
  std::size_t expected_words = 0;
  for (std::size_t t = 0; t < c.tokens; ++t) {
    if (slot_mapping[t] < 0) continue;
    for (std::size_t kind = 0; kind < 2; ++kind) {
      for (std::size_t h = 0; h < c.kv_heads; ++h) {
        for (std::size_t b = 0; b < c.head_dim * element; b += unit) {
          const std::size_t dst = page_byte(c, static_cast<std::size_t>(slot_mapping[t]), kind, h, b) / unit;
          const std::size_t src = ((t * write.token_stride + h * c.head_dim) * element + b) / unit;
          ASSERT_EQ(written[dst], static_cast<std::int64_t>(kind * input_words + src))
              << "token " << t << " kind " << kind << " head " << h << " byte " << b;
          ++expected_words;
        }
      }
    }
  }
  EXPECT_EQ(static_cast<std::size_t>(std::count_if(written.begin(), written.end(), [](auto w) { return w >= 0; })),
            expected_words)
      << "page words written outside the rows of the tokens' slots";
}

// Runs paged_gather_thread for every block and thread of the launch over
// shuffled page ids and checks each output word is written once, from the
// page word of its token, head and kind.
void walk_paged_gather(const PagedPlanCase& c) {
  const std::size_t element = dtype_size(c.dtype);
  std::vector<std::int32_t> page_ids(c.num_pages);
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::shuffle(page_ids.begin(), page_ids.end(), std::mt19937(12));
  ASSERT_LE(c.tokens, c.num_pages * c.page_size);
  page_ids.resize((c.tokens + c.page_size - 1) / c.page_size);
  PagedGather gather;
  gather.pages = plan_pages(c);
  gather.page_ids = page_ids.data();
  gather.tokens = c.tokens;
  gather.keys = reinterpret_cast<void*>((std::uintptr_t{1} << 30) + c.misalign);
  gather.values = reinterpret_cast<void*>((std::uintptr_t{1} << 31) + c.misalign);
  const std::size_t unit = cuda::paged_gather_unit(gather);
  const cuda::PagedLaunch launch = capped(cuda::plan_paged(gather.pages, c.tokens, 0, unit), c);
  ASSERT_EQ(launch.units * unit, c.head_dim * element);

  const std::size_t page_words = c.num_pages * 2 * c.page_size * c.kv_heads * c.head_dim * element / unit;
  const std::size_t output_words = c.kv_heads * c.tokens * c.head_dim * element / unit;
  std::vector<std::vector<std::int64_t>> written(2, std::vector<std::int64_t>(output_words, -1));
  every_thread(launch, [&](unsigned bx, unsigned by, unsigned tx, unsigned ty) {
    cuda::paged_gather_thread(gather, launch, bx, by, tx, ty, [&](std::size_t kind, std::size_t dst, std::size_t src) {
      ASSERT_LT(kind, 2u);
      ASSERT_LT(dst, output_words);
      ASSERT_LT(src, page_words);
      ASSERT_EQ(written[kind][dst], -1) << "output word written twice";
      written[kind][dst] = static_cast<std::int64_t>(src);
    });
  });
  for (std::size_t kind = 0; kind < 2; ++kind) {
    for (std::size_t h = 0; h < c.kv_heads; ++h) {
      for (std::size_t t = 0; t < c.tokens; ++t) {
        const std::size_t slot = static_cast<std::size_t>(page_ids[t / c.page_size]) * c.page_size + t % c.page_size;
        for (std::size_t b = 0; b < c.head_dim * element; b += unit) {
          const std::size_t dst = ((h * c.tokens + t) * c.head_dim * element + b) / unit;
          ASSERT_EQ(written[kind][dst], static_cast<std::int64_t>(page_byte(c, slot, kind, h, b) / unit))
              << "token " << t << " kind " << kind << " head " << h << " byte " << b;
        }
      }
    }
  }
}

std::vector<PagedPlanCase> paged_plan_cases() {
  using L = PagedLayout;
  using D = DType;
  return {
      {"nhd_f32_head_dim_1", L::Nhd, D::F32, 1, 2, 16, 4, 40, 0, 0, 0, 0},
      {"hnd_f16_head_dim_3", L::Hnd, D::F16, 3, 3, 16, 4, 50, 0, 0, 0, 0},
      {"nhd_bf16_head_dim_129", L::Nhd, D::BF16, 129, 2, 16, 3, 33, 0, 0, 0, 0},
      {"hnd_f32_head_dim_129_page_1", L::Hnd, D::F32, 129, 2, 1, 40, 37, 0, 0, 0, 0},
      {"nhd_bf16_head_dim_128", L::Nhd, D::BF16, 128, 8, 16, 3, 45, 0, 0, 0, 0},
      {"hnd_f32_head_dim_64_padded_stride", L::Hnd, D::F32, 64, 2, 16, 3, 40, 1, 0, 0, 0},
      {"nhd_f16_misaligned", L::Nhd, D::F16, 64, 2, 16, 3, 40, 0, 2, 0, 0},
      {"hnd_f32_rows_above_the_block", L::Hnd, D::F32, 1100, 1, 4, 2, 7, 0, 0, 0, 0},
      {"nhd_page_size_not_a_power_of_two", L::Nhd, D::F16, 5, 2, 3, 9, 26, 0, 0, 0, 0},
      {"hnd_grid_stride_over_tokens_and_pairs", L::Hnd, D::BF16, 33, 5, 16, 8, 120, 0, 0, 2, 3},
      {"nhd_f32_grid_stride_one_block", L::Nhd, D::F32, 3, 4, 16, 3, 41, 0, 0, 1, 1},
      {"one_token", L::Nhd, D::BF16, 128, 8, 16, 2, 1, 0, 0, 0, 0},
  };
}

class PagedWritePlan : public ::testing::TestWithParam<PagedPlanCase> {};

TEST_P(PagedWritePlan, WritesEveryWordOfEachSlotsRowsOnceAndNothingElse) { walk_paged_write(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Shapes, PagedWritePlan, ::testing::ValuesIn(paged_plan_cases()), paged_plan_name);

class PagedGatherPlan : public ::testing::TestWithParam<PagedPlanCase> {};

TEST_P(PagedGatherPlan, WritesEveryOutputWordOnceFromItsTokensPage) { walk_paged_gather(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Shapes, PagedGatherPlan, ::testing::ValuesIn(paged_plan_cases()), paged_plan_name);

// Runs paged_move_thread for every block and thread of the launch over a
// pool of twice the case's pages, moving random source slots of its first
// half to distinct shuffled destination slots of its second half, and
// checks each destination word is written once, from the word of the same
// kind, head and byte of its source slot, and no other page word is written.
void walk_paged_move(const PagedPlanCase& c) {
  const std::size_t element = dtype_size(c.dtype);
  const std::size_t slots = 2 * c.num_pages * c.page_size;
  std::vector<std::int64_t> src_slots, dst_slots(slots - slots / 2);
  std::iota(dst_slots.begin(), dst_slots.end(), static_cast<std::int64_t>(slots / 2));
  std::shuffle(dst_slots.begin(), dst_slots.end(), std::mt19937(13));
  ASSERT_LE(c.tokens, dst_slots.size());
  dst_slots.resize(c.tokens);
  std::mt19937 rng(14);
  for (std::size_t t = 0; t < c.tokens; ++t) src_slots.push_back(static_cast<std::int64_t>(rng() % (slots / 2)));
  PagedMove move;
  move.pages = plan_pages(c);
  move.pages.data = reinterpret_cast<void*>((std::uintptr_t{1} << 20) + c.misalign);
  move.pages.num_pages = 2 * c.num_pages;
  move.src_slots = src_slots.data();
  move.dst_slots = dst_slots.data();
  move.tokens = c.tokens;
  const std::size_t unit = cuda::paged_move_unit(move);
  const cuda::PagedLaunch launch = capped(cuda::plan_paged(move.pages, c.tokens, 0, unit), c);
  ASSERT_EQ(launch.units * unit, c.head_dim * element);

  const std::size_t page_words = slots * 2 * c.kv_heads * c.head_dim * element / unit;
  std::vector<std::int64_t> written(page_words, -1);
  every_thread(launch, [&](unsigned bx, unsigned by, unsigned tx, unsigned ty) {
    cuda::paged_move_thread(move, launch, bx, by, tx, ty, [&](std::size_t kind, std::size_t dst, std::size_t src) {
      ASSERT_LT(kind, 2u);
      ASSERT_LT(dst, page_words);
      ASSERT_LT(src, page_words);
      ASSERT_EQ(written[dst], -1) << "page word written twice";
      written[dst] = static_cast<std::int64_t>(src);
    });
  });
  std::size_t expected_words = 0;
  for (std::size_t t = 0; t < c.tokens; ++t) {
    for (std::size_t kind = 0; kind < 2; ++kind) {
      for (std::size_t h = 0; h < c.kv_heads; ++h) {
        for (std::size_t b = 0; b < c.head_dim * element; b += unit) {
          const std::size_t dst = page_byte(c, static_cast<std::size_t>(dst_slots[t]), kind, h, b) / unit;
          const std::size_t src = page_byte(c, static_cast<std::size_t>(src_slots[t]), kind, h, b) / unit;
          ASSERT_EQ(written[dst], static_cast<std::int64_t>(src))
              << "token " << t << " kind " << kind << " head " << h << " byte " << b;
          ++expected_words;
        }
      }
    }
  }
  EXPECT_EQ(static_cast<std::size_t>(std::count_if(written.begin(), written.end(), [](auto w) { return w >= 0; })),
            expected_words)
      << "page words written outside the rows of the destination slots";
}

class PagedMovePlan : public ::testing::TestWithParam<PagedPlanCase> {};

TEST_P(PagedMovePlan, WritesEveryWordOfEachDestinationSlotsRowsOnceFromItsSourceSlot) { walk_paged_move(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Shapes, PagedMovePlan, ::testing::ValuesIn(paged_plan_cases()), paged_plan_name);

// ---- paged_build_step and paged_accounting ----

// Host page tables for the walks below: `rows` rows of `row_capacity`
// random columns; the first `used` rows (in shuffled order) get lengths in
// [0, max_length] and pages below num_pages, a third of them sharing their
// first full page with the row before.
struct PlanTables {
  std::vector<std::int32_t> block_table, lengths, used_rows;
  PagedTables shape;  ///< the sizes, without the pointers (a copy moves the vectors)

  PlanTables(std::size_t rows, std::size_t row_capacity, std::size_t page_size, std::size_t used,
             std::size_t max_length, std::size_t num_pages, std::uint32_t seed)
      : shape{nullptr, nullptr, rows, row_capacity, page_size} {
    std::mt19937 rng(seed);
    block_table.resize(rows * row_capacity);
    for (std::int32_t& id : block_table) id = static_cast<std::int32_t>(rng());
    for (std::size_t r = 0; r < rows; ++r) lengths.push_back(static_cast<std::int32_t>(rng() % 1000));
    std::vector<std::int32_t> order(rows);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const PagedTables view = this->view();
    for (std::size_t i = 0; i < used; ++i) {
      const auto row = static_cast<std::size_t>(order[i]);
      const std::size_t length = rng() % (max_length + 1);
      lengths[row] = static_cast<std::int32_t>(length);
      for (std::size_t j = 0; j < view.pages_of(length); ++j) {
        view.page(row, j) = static_cast<std::int32_t>(rng() % num_pages);
      }
      const auto parent = i > 0 ? static_cast<std::size_t>(order[i - 1]) : row;
      if (i % 3 == 1 && length >= page_size && static_cast<std::size_t>(lengths[parent]) >= page_size) {
        view.page(row, 0) = view.page(parent, 0);
      }
      used_rows.push_back(order[i]);
    }
  }
  PagedTables view() {
    PagedTables view = shape;
    view.block_table = block_table.data();
    view.lengths = lengths.data();
    return view;
  }
};

// A step over the used rows of `tables`: each entry grows by up to
// 2 * page_size tokens, its new columns (and every other entry's last
// column) updated to fresh pages, in shuffled order.
struct PlanStep {
  std::vector<std::int32_t> lengths, fresh, update_indptr{0}, update_cols, update_pages;
  std::size_t total_new = 0, total_pages = 0;

  PlanStep(const PlanTables& tables, std::size_t num_pages, std::uint32_t seed) {
    std::mt19937 rng(seed);
    const PagedTables& t = tables.shape;
    for (std::size_t b = 0; b < tables.used_rows.size(); ++b) {
      const auto old_length = static_cast<std::size_t>(tables.lengths[static_cast<std::size_t>(tables.used_rows[b])]);
      const std::size_t length = std::min(old_length + rng() % (2 * t.page_size + 1), t.row_capacity * t.page_size);
      std::vector<std::int32_t> columns;
      for (std::size_t j = t.pages_of(old_length); j < t.pages_of(length); ++j) {
        columns.push_back(static_cast<std::int32_t>(j));
      }
      if (b % 2 == 1 && old_length > 0) columns.push_back(static_cast<std::int32_t>(t.pages_of(old_length) - 1));
      std::shuffle(columns.begin(), columns.end(), rng);
      for (const std::int32_t column : columns) {
        update_cols.push_back(column);
        update_pages.push_back(static_cast<std::int32_t>(rng() % num_pages));
      }
      update_indptr.push_back(static_cast<std::int32_t>(update_cols.size()));
      lengths.push_back(static_cast<std::int32_t>(length));
      fresh.push_back(static_cast<std::int32_t>(length - old_length));
      total_new += length - old_length;
      total_pages += t.pages_of(length);
    }
  }
};

// The step's outputs, in host memory, initialised to -7 (no answer).
struct PlanStepOutputs {
  std::vector<std::int64_t> slot_mapping;
  std::vector<std::int32_t> kv_indptr, kv_indices, kv_last_page_len, qo_indptr;

  explicit PlanStepOutputs(const PlanStep& step)
      : slot_mapping(step.total_new, -7),
        kv_indptr(step.lengths.size() + 1, -7),
        kv_indices(step.total_pages, -7),
        kv_last_page_len(step.lengths.size(), -7),
        qo_indptr(step.lengths.size() + 1, -7) {}

  PagedStepBuild describe(PagedTables tables, const std::vector<std::int32_t>& rows, const PlanStep& step) {
    PagedStepBuild build;
    build.tables = tables;
    build.batch = rows.size();
    build.entry_rows = rows.data();
    build.entry_lengths = step.lengths.data();
    build.entry_new = step.fresh.data();
    build.update_indptr = step.update_indptr.data();
    build.update_cols = step.update_cols.data();
    build.update_pages = step.update_pages.data();
    build.slot_mapping = slot_mapping.data();
    build.kv_indptr = kv_indptr.data();
    build.kv_indices = kv_indices.data();
    build.kv_last_page_len = kv_last_page_len.data();
    build.qo_indptr = qo_indptr.data();
    return build;
  }
};

struct PagedTablesPlanCase {
  const char* name;
  std::size_t page_size, rows, used, row_capacity, num_pages;
  unsigned blocks_cap;  // paged_build_step blocks; 0 = the launcher's plan
};

std::string paged_tables_plan_name(const ::testing::TestParamInfo<PagedTablesPlanCase>& param) {
  return param.param.name;
}

std::vector<PagedTablesPlanCase> paged_tables_plan_cases() {
  return {
      {"one_entry_page_16", 16, 3, 1, 8, 50, 0},
      {"page_size_1", 1, 40, 30, 40, 100, 0},
      {"page_size_16_many_entries", 16, 1200, 1100, 6, 3000, 0},
      {"grid_stride_over_entries", 16, 300, 260, 6, 500, 7},
      {"rows_longer_than_a_block_and_a_warp", 1, 4, 3, 2000, 4000, 0},
      {"no_entries", 16, 5, 0, 4, 10, 0},
  };
}

class PagedStepBuildPlan : public ::testing::TestWithParam<PagedTablesPlanCase> {};

// Runs each block's phases as paged_step_kernel does (every thread's part of
// the offsets, summed; every thread's updates; every thread's writes) for
// every block of the launch, and checks the tables and outputs are
// CpuBackend's.
TEST_P(PagedStepBuildPlan, EveryBlocksThreadsBuildTheCpusTablesAndMetadata) {
  const PagedTablesPlanCase& c = GetParam();
  const PlanTables before(c.rows, c.row_capacity, c.page_size, c.used, c.row_capacity * c.page_size - 2 * c.page_size,
                          c.num_pages, 21);
  const PlanStep step(before, c.num_pages, 22);
  PlanTables walked = before;
  PlanTables cpu = before;
  PlanStepOutputs walked_out(step), cpu_out(step);
  const PagedStepBuild walk = walked_out.describe(walked.view(), before.used_rows, step);
  backend_for(Device::cpu()).paged_build_step(cpu_out.describe(cpu.view(), before.used_rows, step), Stream{});

  if (walk.batch > 0) {
    cuda::PagedStepLaunch launch = cuda::plan_paged_step(walk);
    if (c.blocks_cap != 0) launch.blocks = std::min(launch.blocks, c.blocks_cap);
    constexpr unsigned threads = cuda::kPagedStepThreads;
    for (unsigned block = 0; block < launch.blocks; ++block) {
      for (std::size_t b = block; b < walk.batch; b += launch.blocks) {
        cuda::PagedStepOffsets offsets;
        for (unsigned tid = 0; tid < threads; ++tid) {
          const cuda::PagedStepOffsets part = cuda::paged_step_offsets_thread(walk, launch.split, b, tid, threads);
          offsets.pages += part.pages;
          offsets.tokens += part.tokens;
        }
        for (unsigned tid = 0; tid < threads; ++tid) cuda::paged_step_update_thread(walk, b, tid, threads);
        for (unsigned tid = 0; tid < threads; ++tid) {
          cuda::paged_step_write_thread(walk, launch.split, b, offsets, tid, threads);
        }
      }
    }
  }
  EXPECT_EQ(walked.block_table, cpu.block_table);
  EXPECT_EQ(walked.lengths, cpu.lengths);
  EXPECT_EQ(walked_out.slot_mapping, cpu_out.slot_mapping);
  EXPECT_EQ(walked_out.kv_indptr, cpu_out.kv_indptr);
  EXPECT_EQ(walked_out.kv_indices, cpu_out.kv_indices);
  EXPECT_EQ(walked_out.kv_last_page_len, cpu_out.kv_last_page_len);
  EXPECT_EQ(walked_out.qo_indptr, cpu_out.qo_indptr);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedStepBuildPlan, ::testing::ValuesIn(paged_tables_plan_cases()),
                         paged_tables_plan_name);

class PagedAccountingPlan : public ::testing::TestWithParam<PagedTablesPlanCase> {};

/// What one accounting walk reads: the rows asked about and the live ones,
/// and the layer groups (rows r + g * group_rows) with their null page.
struct AccountingRows {
  std::vector<std::int32_t> asked = {}, live = {};
  std::size_t groups = 1, group_rows = 0;
  std::int32_t null_page = -1;
};

// Runs paged_accounting_kernel's phases for every thread of its one block
// (per-sequence rows and zeroing; counting by every lane of every warp;
// every thread's pool sums, added) and checks the outputs are CpuBackend's.
void expect_accounting_walk_is_the_cpus(const PagedTablesPlanCase& c, PlanTables& tables, const AccountingRows& in) {
  const auto run = [&](std::vector<std::int64_t>& per_sequence, std::vector<std::int64_t>& pool,
                       std::vector<std::uint32_t>& scratch) {
    PagedAccounting accounting;
    accounting.tables = tables.view();
    accounting.num_pages = c.num_pages;
    accounting.page_bytes = 12345;
    accounting.groups = in.groups;
    accounting.group_rows = in.group_rows;
    accounting.null_page = in.null_page;
    accounting.rows = in.asked.data();
    accounting.batch = in.asked.size();
    accounting.live_rows = in.live.data();
    accounting.live = in.live.size();
    accounting.page_refs = scratch.data();
    accounting.page_fill = scratch.data() + c.num_pages;
    accounting.per_sequence = per_sequence.data();
    accounting.pool = pool.data();
    return accounting;
  };
  const std::size_t asked = in.asked.size();
  std::vector<std::int64_t> walked_rows(4 * asked, -7), cpu_rows(4 * asked, -7), walked_pool(4, -7), cpu_pool(4, -7);
  std::vector<std::uint32_t> walked_scratch(2 * c.num_pages, 77), cpu_scratch(2 * c.num_pages, 77);
  backend_for(Device::cpu()).paged_accounting(run(cpu_rows, cpu_pool, cpu_scratch), Stream{});

  const PagedAccounting walk = run(walked_rows, walked_pool, walked_scratch);
  constexpr unsigned threads = cuda::kPagedAccountingThreads;
  constexpr unsigned warps = threads / cuda::kPagedWarpLanes;
  for (unsigned tid = 0; tid < threads; ++tid) {
    cuda::paged_accounting_sequence_thread(walk, tid, threads);
    cuda::paged_accounting_zero_thread(walk, tid, threads);
  }
  for (unsigned tid = 0; tid < threads; ++tid) {
    cuda::paged_accounting_count_thread(walk, tid / cuda::kPagedWarpLanes, warps, tid % cuda::kPagedWarpLanes,
                                        [&](std::size_t page, std::uint32_t fill) {
                                          ASSERT_LT(page, c.num_pages);
                                          ++walk.page_refs[page];
                                          walk.page_fill[page] = std::max(walk.page_fill[page], fill);
                                        });
  }
  cuda::PagedPoolSums sums;
  for (unsigned tid = 0; tid < threads; ++tid) {
    const cuda::PagedPoolSums part = cuda::paged_accounting_pool_thread(walk, tid, threads);
    sums.referenced += part.referenced;
    sums.shared += part.shared;
    sums.tokens += part.tokens;
  }
  cuda::paged_accounting_store_pool(walk, sums);
  EXPECT_EQ(walked_rows, cpu_rows);
  EXPECT_EQ(walked_pool, cpu_pool);
  EXPECT_EQ(walked_scratch, cpu_scratch) << "the scratch's references and fills";
}

TEST_P(PagedAccountingPlan, EveryThreadOfTheBlockCountsTheCpusTotals) {
  const PagedTablesPlanCase& c = GetParam();
  PlanTables tables(c.rows, c.row_capacity, c.page_size, c.used, c.row_capacity * c.page_size, c.num_pages, 23);
  AccountingRows in{.asked = std::vector<std::int32_t>(c.rows), .live = tables.used_rows};
  std::iota(in.asked.begin(), in.asked.end(), 0);
  expect_accounting_walk_is_the_cpus(c, tables, in);
}

// Two layer groups: each live row of the first has a row of the second of
// its length, every third of whose columns (from the second) names the null
// page, the last page id.
TEST_P(PagedAccountingPlan, WithLayerGroupsAndANullPageEveryThreadCountsTheCpusTotals) {
  const PagedTablesPlanCase& c = GetParam();
  PlanTables tables(2 * c.rows, c.row_capacity, c.page_size, 2 * c.used, c.row_capacity * c.page_size, c.num_pages,
                    24);
  AccountingRows in{.groups = 2, .group_rows = c.rows, .null_page = static_cast<std::int32_t>(c.num_pages - 1)};
  const PagedTables view = tables.view();
  for (const std::int32_t row : tables.used_rows) {
    if (static_cast<std::size_t>(row) >= c.rows) continue;
    const auto r = static_cast<std::size_t>(row);
    tables.lengths[r + c.rows] = tables.lengths[r];
    for (std::size_t j = 0; j < view.pages_of(static_cast<std::size_t>(tables.lengths[r])); ++j) {
      if (view.page(r, j) == in.null_page) view.page(r, j) = 0;
      view.page(r + c.rows, j) =
          j % 3 == 1 ? in.null_page : static_cast<std::int32_t>((r * 7 + j * 13) % (c.num_pages - 1));
    }
    in.live.push_back(row);
  }
  in.asked = in.live;
  expect_accounting_walk_is_the_cpus(c, tables, in);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedAccountingPlan, ::testing::ValuesIn(paged_tables_plan_cases()),
                         paged_tables_plan_name);

TEST(PagedPlan, WordsAreTheWidestThatRowsStridesAndAddressesAllow) {
  EXPECT_EQ(cuda::widest_unit({256, 0x1000}), 16u);
  EXPECT_EQ(cuda::widest_unit({256, 0x1008}), 8u);
  EXPECT_EQ(cuda::widest_unit({258, 0x1000}), 2u);
  EXPECT_EQ(cuda::widest_unit({516, 0x1000}), 4u);
  EXPECT_EQ(cuda::widest_unit({3, 0x1000}), 1u);
  PagedWrite write;
  write.pages.dtype = DType::BF16;
  write.pages.head_dim = 128;
  write.token_stride = 8 * 128 + 1;  // an odd stride of 2-byte elements: 2-byte words
  EXPECT_EQ(cuda::paged_write_unit(write), 2u);
  write.token_stride = 3 * 8 * 128;  // a slice of a fused QKV projection
  EXPECT_EQ(cuda::paged_write_unit(write), 16u);
}

TEST(PagedPlan, PageSplitShiftsForPowersOfTwoAndDividesOtherwise) {
  for (const std::size_t page_size : {1, 2, 3, 16, 17, 256}) {
    const cuda::PageSplit split = cuda::plan_page_split(page_size);
    EXPECT_EQ(split.power_of_two, (page_size & (page_size - 1)) == 0) << page_size;
    for (std::size_t slot = 0; slot < 1000; ++slot) ASSERT_EQ(split.page(slot), slot / page_size) << page_size;
    EXPECT_EQ(split.page(std::size_t{1} << 40), (std::size_t{1} << 40) / page_size);
  }
}

// ---- top-k row split ----

TEST(TopKSplit, SegmentsCoverEveryColumnOnceInTileMultiples) {
  for (const std::size_t rows :
       {std::size_t{1}, std::size_t{2}, std::size_t{12}, std::size_t{264}, std::size_t{4096}}) {
    for (const std::size_t cols : {std::size_t{1}, std::size_t{31}, std::size_t{1023}, std::size_t{1024},
                                   std::size_t{8192}, std::size_t{100000}, std::size_t{1} << 30}) {
      for (const std::size_t tile : {std::size_t{128}, std::size_t{1024}}) {
        const cuda::TopKSplit split = cuda::plan_top_k_split(rows, cols, tile, 132);
        ASSERT_GE(split.segments, 1u);
        ASSERT_LE(split.segments, cuda::kMaxGridY);
        ASSERT_EQ(split.segment_columns % tile, 0u);
        ASSERT_GE(split.segments * split.segment_columns, cols) << rows << "x" << cols;
        ASSERT_LT((split.segments - 1) * split.segment_columns, cols) << "an empty segment";
        if (split.segments > 1) {
          ASSERT_GE(split.segment_columns, cuda::kTopKMinSegmentColumns);
        }
      }
    }
  }
}

TEST(TopKSplit, OneRowQueriesSpreadOverTheDevice) {
  EXPECT_EQ(cuda::plan_top_k_split(1, 8192, 1024, 132).segments, 8u);
  // 264 wanted; segments of 2^20 / 264 columns round up to 4 tiles of 1024: 256 segments.
  EXPECT_EQ(cuda::plan_top_k_split(1, 1 << 20, 1024, 132).segments, 256u);
  EXPECT_EQ(cuda::plan_top_k_split(4096, 8192, 1024, 132).segments, 1u);  // enough rows already
}

// The merge keeps the k best keys of the segments' k best: the answer of one
// pass over the row, whatever the split (keys are unique and totally ordered).
TEST(TopKSplit, MergingSegmentWinnersGivesTheWholeRowsTopK) {
  const std::size_t cols = 20000;
  std::vector<float> row = random_values(cols, 11);
  for (std::size_t c = 0; c < cols; c += 97) row[c] = 0.5f;  // many ties
  row[5] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::uint64_t> keys(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    keys[c] = detail::top_k_key(float_bits(row[c]), static_cast<std::uint32_t>(c));
  }
  for (const std::size_t k : {std::size_t{1}, std::size_t{31}, std::size_t{32}}) {
    std::vector<std::uint64_t> whole = keys;
    std::sort(whole.rbegin(), whole.rend());
    whole.resize(k);
    const cuda::TopKSplit split = cuda::plan_top_k_split(1, cols, 128, 132);
    ASSERT_GT(split.segments, 1u);
    std::vector<std::uint64_t> candidates;
    for (std::size_t s = 0; s < split.segments; ++s) {
      std::vector<std::uint64_t> segment(
          keys.begin() + static_cast<std::ptrdiff_t>(s * split.segment_columns),
          keys.begin() + static_cast<std::ptrdiff_t>(std::min(cols, (s + 1) * split.segment_columns)));
      std::sort(segment.rbegin(), segment.rend());
      segment.resize(k, 0);
      candidates.insert(candidates.end(), segment.begin(), segment.end());
    }
    std::sort(candidates.rbegin(), candidates.rend());
    candidates.resize(k);
    EXPECT_EQ(candidates, whole) << "k = " << k;
  }
}

// The radix select kernel's steps, run over a row on the host: eight passes
// narrow the prefix to the k-th largest key, exactly k keys are at or above
// it, and the bitonic network (each stage's compare-swaps are independent,
// so a sequential loop is the block's stage) sorts them descending.
TEST(RadixSelect, PassesFindTheKthKeyAndTheNetworkSortsTheKSelected) {
  for (const std::size_t cols : {std::size_t{33}, std::size_t{1025}, std::size_t{5000}}) {
    std::vector<float> row = random_values(cols, static_cast<std::uint32_t>(cols));
    for (std::size_t c = 0; c < cols; c += 7) row[c] = 0.25f;  // ties broken by index
    row[cols / 2] = std::numeric_limits<float>::quiet_NaN();
    row[1] = -0.0f;
    std::vector<std::uint64_t> keys(cols);
    for (std::size_t c = 0; c < cols; ++c)
      keys[c] = detail::top_k_key(float_bits(row[c]), static_cast<std::uint32_t>(c));
    std::vector<std::uint64_t> sorted = keys;
    std::sort(sorted.rbegin(), sorted.rend());
    for (const std::size_t k : {std::size_t{33}, std::size_t{100}, std::size_t{1000}, std::size_t{1024}}) {
      if (k > cols) continue;
      std::uint64_t prefix = 0;
      std::size_t rank = k;
      for (unsigned pass = 0; pass < cuda::kSelectPasses; ++pass) {
        std::vector<std::uint32_t> histogram(cuda::kSelectBuckets, 0);
        for (const std::uint64_t key : keys) {
          if (cuda::matches_prefix(key, prefix, pass)) ++histogram[cuda::select_digit(key, pass)];
        }
        const cuda::SelectStep step = cuda::select_bucket(histogram.data(), rank);
        prefix = cuda::with_digit(prefix, pass, step.digit);
        rank = step.k;
      }
      ASSERT_EQ(prefix, sorted[k - 1]) << cols << " columns, k " << k;
      const std::uint32_t width = cuda::select_sort_width(k);
      ASSERT_GE(width, k);
      ASSERT_LE(width, cuda::kSelectMaxK);
      std::vector<std::uint64_t> chosen(width, 0);
      std::size_t count = 0;
      for (const std::uint64_t key : keys) {
        if (key >= prefix) chosen[count++] = key;
      }
      ASSERT_EQ(count, k);
      for (std::uint32_t size = 2; size <= width; size <<= 1) {
        for (std::uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
          for (std::uint32_t i = 0; i < width; ++i) {
            const std::uint32_t j = i ^ stride;
            const bool descending = (i & size) == 0;
            if (j > i && (descending ? chosen[i] < chosen[j] : chosen[i] > chosen[j])) std::swap(chosen[i], chosen[j]);
          }
        }
      }
      chosen.resize(k);
      EXPECT_EQ(chosen, std::vector<std::uint64_t>(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k)));
    }
  }
}

TEST(RadixSelect, SharedMemoryStaysWithinTheDefaultLimit) {
  const std::size_t shared =
      (cuda::kSelectSharedKeys + cuda::select_sort_width(cuda::kSelectMaxK)) * 8 + cuda::kSelectBuckets * 4 + 4;
  EXPECT_LE(shared, cuda::kSharedBudget);
}

TEST(RowTiles, OneRowHeadMeanTilesCoverTheRow) {
  EXPECT_EQ(cuda::row_tile_blocks(1), 1u);
  EXPECT_EQ(cuda::row_tile_blocks(8192), 128u);
  EXPECT_EQ(cuda::row_tile_blocks(8193), 129u);
  EXPECT_GE(std::size_t{cuda::row_tile_blocks(100)} * cuda::kRowTileColumns, 100u);
  EXPECT_LE(cuda::kRowHeadChunk * cuda::kRowTileColumns * sizeof(float), cuda::kSharedBudget);
}

// ---- staged record loads ----

struct StageCase {
  std::size_t capacity, start, first;
  std::uint32_t count, record_bytes, ranks;
};

TEST(StagedRecords, EveryWordOfTheTileIsLoadedOnceFromItsRingSlot) {
  const std::vector<StageCase> cases = {{16, 0, 0, 1, 4, 128},        {16, 15, 0, 16, 76, 128},
                                        {300, 250, 10, 128, 68, 128}, {300, 299, 172, 128, 256, 128},
                                        {1000, 3, 900, 100, 44, 256}, {7, 6, 3, 4, 140, 32}};
  for (const StageCase& c : cases) {
    RecordRing ring;
    ring.capacity = c.capacity;
    ring.start = c.start;
    ring.heads = 3;
    const std::size_t head = 2;
    const std::uint32_t words = c.record_bytes / 4;
    const std::uint32_t stride = cuda::staged_stride_words(c.record_bytes);
    ASSERT_EQ(stride % 2, 1u);
    ASSERT_GE(stride, words);
    std::map<std::size_t, std::size_t> loaded;  // shared word -> global word
    for (std::uint32_t rank = 0; rank < c.ranks; ++rank) {
      cuda::for_each_staged_word(ring, head, c.first, c.count, FastDivmod(words), stride, rank, c.ranks,
                                 [&](std::size_t to, std::size_t from) {
                                   ASSERT_TRUE(loaded.emplace(to, from).second) << "shared word loaded twice";
                                   ASSERT_LT(from, ring.heads * ring.capacity * words);
                                 });
    }
    ASSERT_EQ(loaded.size(), std::size_t{c.count} * words);
    for (std::uint32_t t = 0; t < c.count; ++t) {
      const std::size_t slot = (c.start + c.first + t) % c.capacity;
      for (std::uint32_t w = 0; w < words; ++w) {
        ASSERT_EQ(loaded.at(std::size_t{t} * stride + w), (head * c.capacity + slot) * words + w);
      }
    }
  }
}

TEST(StagedRecords, ConsecutiveRanksLoadConsecutiveWordsWhereTheRingDoesNotWrap) {
  RecordRing ring;
  ring.capacity = 1024;
  ring.heads = 1;
  std::vector<std::size_t> order;
  for (std::uint32_t rank = 0; rank < 32; ++rank) {  // the first word of each lane of warp 0
    bool first = true;
    cuda::for_each_staged_word(ring, 0, 0, 128, FastDivmod(19), 19, rank, 128, [&](std::size_t, std::size_t from) {
      if (first) order.push_back(from);
      first = false;
    });
  }
  for (std::size_t i = 1; i < order.size(); ++i) EXPECT_EQ(order[i], order[i - 1] + 1);
}

// ---- shared memory: every head_dim the config accepts launches without opt-in ----

TEST(SharedMemory, EveryRecordKernelStaysWithinTheDefaultLimitForEveryHeadDim) {
  std::vector<std::uint32_t> dims;
  for (std::uint32_t d = 1; d <= 2100; ++d) dims.push_back(d);
  for (std::uint32_t p = 2048; p <= 131072; p <<= 1) {
    dims.push_back(p - 1);
    dims.push_back(p);
    dims.push_back(p + 1);
  }
  dims.push_back(131070);
  for (const std::uint32_t dim : dims) {
    if (dim > 131070) continue;
    for (const std::uint32_t bits : {1u, 2u, 3u, 4u, 8u}) {
      for (const std::uint32_t projections : {0u, 1u, 32u, 65535u}) {
        const detail::RecordLayout layout = detail::make_record_layout(dim, bits, projections);
        ASSERT_LE(cuda::score_shared_bytes(layout), cuda::kSharedBudget) << dim;
        ASSERT_LE(cuda::prepare_shared_bytes(layout), cuda::kSharedBudget) << dim;
        ASSERT_LE(cuda::attend_partial_shared_bytes(layout), cuda::kSharedBudget) << dim;
        ASSERT_LE(cuda::combine_shared_bytes(layout), cuda::kSharedBudget) << dim;
        ASSERT_LE(cuda::encode_shared_bytes(layout), cuda::kSharedBudget) << dim;
        ASSERT_LE(cuda::decode_shared_bytes(layout), cuda::kSharedBudget) << dim;
      }
    }
  }
}

TEST(SharedMemory, GlobalScratchOfEncodeAndDecodeStaysBounded) {
  const detail::RecordLayout largest = detail::make_record_layout(131070, 8, 65535);
  const std::size_t warps = cuda::global_scratch_warps(cuda::encode_warp_bytes(largest), std::size_t{1} << 30);
  EXPECT_EQ(warps % cuda::kVectorWarps, 0u);
  EXPECT_LE(warps * cuda::encode_warp_bytes(largest),
            (std::size_t{256} << 20) + cuda::kVectorWarps * cuda::encode_warp_bytes(largest));
  EXPECT_EQ(cuda::global_scratch_warps(cuda::encode_warp_bytes(largest), 1), cuda::kVectorWarps);
}

// ---- parallel record math: the group steps give the sequential bits ----

std::vector<float> gaussian(std::size_t n, std::uint32_t seed) { return Gaussian(seed).vector(n); }

std::vector<std::uint32_t> random_signs(std::uint32_t p, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint32_t> signs((2 * p + 31) / 32);
  for (std::uint32_t& w : signs) w = static_cast<std::uint32_t>(rng());
  return signs;
}

struct NoSync {
  void operator()() const {}
};

TEST(ParallelRecord, ButterflyIndicesPartitionEveryStage) {
  for (std::uint32_t p = 2; p <= 4096; p <<= 1) {
    for (std::uint32_t h = 1; h < p; h <<= 1) {
      std::vector<int> touched(p, 0);
      for (std::uint32_t b = 0; b < p / 2; ++b) {
        const std::uint32_t i = detail::butterfly_first(b, h);
        ASSERT_EQ((i / h) % 2, 0u);
        ++touched[i];
        ++touched[i + h];
      }
      for (const int t : touched) ASSERT_EQ(t, 1) << "p " << p << " h " << h;
    }
  }
}

TEST(ParallelRecord, FwhtSplitOverAnyNumberOfRanksGivesTheSequentialBits) {
  for (const std::uint32_t p : {1u, 2u, 4u, 128u, 1024u, 8192u}) {
    const std::vector<float> x = gaussian(p, p);
    std::vector<float> expected = x;
    detail::fwht(expected.data(), p);
    for (const std::uint32_t ranks : {1u, 3u, 32u, 256u}) {
      std::vector<float> actual = x;
      for (std::uint32_t h = 1; h < p; h <<= 1) {
        for (std::uint32_t rank = 0; rank < ranks; ++rank) detail::fwht_stage(actual.data(), p, h, rank, ranks);
      }
      expect_same_bits(actual, expected);
    }
  }
}

TEST(ParallelRecord, GroupRotateAndUnrotateGiveTheSequentialBits) {
  for (const std::uint32_t dim : {1u, 3u, 32u, 100u, 128u, 4096u, 4097u}) {
    const std::uint32_t p = detail::next_power_of_two(dim);
    const std::vector<float> x = gaussian(dim, dim + 1);
    const std::vector<std::uint32_t> signs = random_signs(p, dim);
    std::vector<float> expected(p);
    std::vector<float> actual(p);
    detail::rotate(x.data(), dim, expected.data(), signs.data(), p);
    detail::group_rotate(x.data(), dim, actual.data(), signs.data(), p, 0, 1, NoSync{});
    expect_same_bits(actual, expected);

    std::vector<float> back_expected(dim);
    std::vector<float> back_actual(dim);
    std::vector<float> y = expected;
    detail::unrotate(y.data(), back_expected.data(), signs.data(), p, dim);
    y = expected;
    detail::group_unrotate(y.data(), back_actual.data(), signs.data(), p, dim, 0, 1, NoSync{});
    expect_same_bits(back_actual, back_expected);
  }
}

// warp_tree_sum: each lane tree-sums its lane_block, then lanes combine
// pairwise (xor 1, 2, 4, ...). Emulated here lane by lane against tree_sum.
TEST(ParallelRecord, LaneBlocksCombinedPairwiseAreTreeSum) {
  for (std::uint32_t n = 1; n <= (1u << 17); n <<= 1) {
    const std::vector<float> v = gaussian(n, n);
    std::vector<float> sequential = v;
    const float expected = detail::tree_sum(sequential.data(), n);
    std::vector<float> work = v;
    std::vector<float> lanes(32, 0.0f);
    std::size_t covered = 0;
    for (std::uint32_t lane = 0; lane < 32; ++lane) {
      const detail::LaneBlock block = detail::lane_block(n, lane);
      covered += block.count;
      if (block.count > 0) lanes[lane] = detail::tree_sum(work.data() + block.first, block.count);
    }
    ASSERT_EQ(covered, n);
    for (std::uint32_t width = 1; width < std::min(n, 32u); width <<= 1) {
      std::vector<float> next(32);
      for (std::uint32_t lane = 0; lane < 32; ++lane) next[lane] = detail::add_rn(lanes[lane], lanes[lane ^ width]);
      lanes = next;
    }
    ASSERT_EQ(float_bits(lanes[0]), float_bits(expected)) << "n = " << n;
  }
}

TEST(ParallelRecord, CodeWordsEqualThePackedBitStream) {
  std::mt19937 rng(3);
  for (std::uint32_t bits = 1; bits <= 8; ++bits) {
    for (const std::uint32_t dim : {1u, 5u, 32u, 100u, 128u, 1000u}) {
      const detail::RecordLayout layout = detail::make_record_layout(dim, bits, 0);
      std::vector<std::uint8_t> codes(layout.padded_dim);
      std::vector<std::uint8_t> packed(layout.code_bytes, 0);
      for (std::uint32_t i = 0; i < layout.padded_dim; ++i) {
        codes[i] = static_cast<std::uint8_t>(rng() & ((1u << bits) - 1u));
        detail::pack_code(packed.data(), i, bits, codes[i]);
      }
      for (std::uint32_t w = 0; w < layout.code_bytes / 4; ++w) {
        std::uint32_t expected = 0;
        std::memcpy(&expected, packed.data() + 4 * w, 4);
        ASSERT_EQ(detail::code_word(codes.data(), layout, w), expected) << "bits " << bits << " dim " << dim;
      }
    }
  }
}

// ---- attend split ----

TEST(AttendSplit, ChunksCoverEveryTokenOnce) {
  for (const std::size_t tokens : {std::size_t{1}, std::size_t{255}, std::size_t{256}, std::size_t{257},
                                   std::size_t{511}, std::size_t{513}, std::size_t{100000}}) {
    const std::size_t chunks = detail::attend_chunks(tokens);
    EXPECT_GE(chunks * detail::kAttendChunkTokens, tokens);
    EXPECT_LT((chunks - 1) * detail::kAttendChunkTokens, tokens);
  }
}

TEST(AttendSplit, OneChunkCombinesToItsOwnState) {
  const std::vector<float> partial = {1.5f, 3.25f, 0.1f, -0.7f};
  EXPECT_EQ(detail::attend_max(partial.data(), 1, 4), 1.5f);
  EXPECT_EQ(detail::attend_total(partial.data(), 1, 4, 1.5f), 3.25f);
  EXPECT_EQ(detail::attend_coordinate(partial.data(), 1, 4, 1.5f, 1), -0.7f);
}

TEST(AttendSplit, ChunksRescaleToTheLargestMaximum) {
  // chunk 0: max 0, sum 1, acc 2; chunk 1: max ln 2 (scale 1 vs 2), sum 1, acc 1.
  const float ln2 = 0.693147182f;
  const std::vector<float> partials = {0.0f, 1.0f, 2.0f, ln2, 1.0f, 1.0f};
  const float max = detail::attend_max(partials.data(), 2, 3);
  EXPECT_EQ(max, ln2);
  EXPECT_NEAR(detail::attend_total(partials.data(), 2, 3, max), 1.5f, 1e-6f);
  EXPECT_NEAR(detail::attend_coordinate(partials.data(), 2, 3, max, 0), 2.0f, 1e-6f);
}

}  // namespace
}  // namespace micache::testing
