// The conformance suite of the Backend operations over a paged cache's
// device-resident page tables and pages (paged_tables.hpp): paged_move,
// paged_build_step and paged_accounting, driven with raw descriptors on every
// available backend, with memory from the backend's own allocate and copies.
// On the CPU the answers are compared with reference loops written here; on
// any other backend with CpuBackend, byte for byte (copies and integers).
// Every buffer starts from random bytes and is compared whole, guard band
// included, so a missing or stray write fails too.
//
// Cases are named `<case>_<device>`; run them with
// --gtest_filter='BackendConformancePaged{Move,StepBuild,Accounting}*'.
// Boundaries covered:
// - paged_move (17): NHD and HND; F32, F16, BF16; head_dim 1, 3, 64, 128,
//   129; page_size 1, 3 and 16; sources repeated (a fork's compaction), one
//   token, 700 tokens, 0 tokens;
// - paged_build_step (16): batch 0, 1 (decode, prefill of an empty row) and
//   many (2000 entries: blocks' offsets over many warps); empty sequences
//   alone and between others; lengths ending exactly on a page boundary,
//   before and after the step; updates replacing existing columns (copy on
//   write of the last page), in shuffled order; page_size 1 and 16; rows
//   not in the step and columns past a row's pages left as they were;
// - paged_accounting (16): batch 0 and live 0; empty sequences; lengths on
//   page boundaries; rows sharing full pages, and a fork sharing every page
//   with its parent (the partial last page too); page_size 1 and 16; pools
//   wider than a block of threads, a row longer than a warp's lanes; page
//   bytes above 2^32; asked rows repeated and not live; three layer groups,
//   and window groups naming the null page.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "conformance_support.hpp"

namespace micache::testing::conformance {
namespace {

Backend& cpu_backend() { return backend_for(Device::cpu()); }

std::size_t pages_for(std::size_t length, std::size_t page_size) { return (length + page_size - 1) / page_size; }

// ===========================================================================
// paged_move
// ===========================================================================

struct MoveCase {
  std::string name;
  PagedLayout layout = PagedLayout::Nhd;
  DType dtype = DType::F32;
  std::size_t head_dim = 64;
  std::size_t kv_heads = 2;
  std::size_t page_size = 16;
  std::size_t num_pages = 8;
  std::size_t tokens = 0;
  bool repeat_sources = false;  ///< every other token's source is the previous token's

  std::size_t element() const { return dtype_size(dtype); }
  std::size_t row_bytes() const { return head_dim * element(); }
  std::size_t page_bytes() const { return num_pages * 2 * page_size * kv_heads * row_bytes(); }
  /// Byte of the row of head `head` of the key (kind 0) or value (1) in slot `slot`.
  std::size_t row_byte(std::size_t slot, std::size_t kind, std::size_t head) const {
    const std::size_t page = slot / page_size;
    const std::size_t offset = slot % page_size;
    const std::size_t row = layout == PagedLayout::Nhd ? ((page * 2 + kind) * page_size + offset) * kv_heads + head
                                                       : ((page * 2 + kind) * kv_heads + head) * page_size + offset;
    return row * row_bytes();
  }
};

struct MoveData {
  Bytes pages;
  std::vector<std::int64_t> src_slots;  ///< from the first half of the pool
  std::vector<std::int64_t> dst_slots;  ///< distinct, from the second half (fresh pages)
};

MoveData move_data(const MoveCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  std::mt19937 rng(seed + 1);
  const std::size_t half = c.num_pages / 2 * c.page_size;
  MoveData data{random_bytes(c.page_bytes(), seed), {}, {}};
  std::vector<std::int64_t> fresh(c.num_pages * c.page_size - half);
  std::iota(fresh.begin(), fresh.end(), static_cast<std::int64_t>(half));
  std::shuffle(fresh.begin(), fresh.end(), rng);
  EXPECT_LE(c.tokens, fresh.size()) << "more tokens than fresh slots";
  for (std::size_t t = 0; t < c.tokens; ++t) {
    const bool repeat = c.repeat_sources && t % 2 == 1;
    data.src_slots.push_back(repeat ? data.src_slots.back() : static_cast<std::int64_t>(rng() % half));
    data.dst_slots.push_back(fresh[t]);
  }
  return data;
}

/// Token by token, kind by kind, head by head: the row of the source slot to the row of the destination slot.
Bytes reference_move(const MoveCase& c, const MoveData& data) {
  Bytes pages = data.pages;
  for (std::size_t t = 0; t < c.tokens; ++t) {
    for (std::size_t kind = 0; kind < 2; ++kind) {
      for (std::size_t h = 0; h < c.kv_heads; ++h) {
        std::memcpy(pages.data() + c.row_byte(static_cast<std::size_t>(data.dst_slots[t]), kind, h),
                    data.pages.data() + c.row_byte(static_cast<std::size_t>(data.src_slots[t]), kind, h),
                    c.row_bytes());
      }
    }
  }
  return pages;
}

Bytes run_move(Backend& backend, const MoveCase& c, const MoveData& data) {
  const DeviceBuffer pages(backend, data.pages);
  const DeviceBuffer src(backend, bytes_of(data.src_slots));
  const DeviceBuffer dst(backend, bytes_of(data.dst_slots));
  PagedMove move;
  move.pages = {.data = pages.at(),
                .dtype = c.dtype,
                .layout = c.layout,
                .num_pages = c.num_pages,
                .page_size = c.page_size,
                .kv_heads = c.kv_heads,
                .head_dim = c.head_dim};
  move.src_slots = src.as<std::int64_t>();
  move.dst_slots = dst.as<std::int64_t>();
  move.tokens = c.tokens;
  backend.paged_move(move, Stream{});
  return pages.read();
}

std::vector<MoveCase> move_cases() {
  using D = DType;
  using L = PagedLayout;
  return {
      {.name = "nhd_f32_head_dim_64", .tokens = 50},
      {.name = "hnd_f32_head_dim_64", .layout = L::Hnd, .tokens = 50},
      {.name = "nhd_f16_head_dim_128", .dtype = D::F16, .head_dim = 128, .kv_heads = 4, .tokens = 40},
      {.name = "hnd_f16_head_dim_128", .layout = L::Hnd, .dtype = D::F16, .head_dim = 128, .tokens = 40},
      {.name = "nhd_bf16_head_dim_128", .dtype = D::BF16, .head_dim = 128, .kv_heads = 8, .tokens = 60},
      {.name = "hnd_bf16_head_dim_128", .layout = L::Hnd, .dtype = D::BF16, .head_dim = 128, .tokens = 60},
      {.name = "nhd_bf16_head_dim_1_two_byte_words", .dtype = D::BF16, .head_dim = 1, .kv_heads = 3, .tokens = 30},
      {.name = "hnd_f16_head_dim_3", .layout = L::Hnd, .dtype = D::F16, .head_dim = 3, .tokens = 30},
      {.name = "nhd_f32_head_dim_129", .head_dim = 129, .tokens = 35},
      {.name = "hnd_bf16_head_dim_129", .layout = L::Hnd, .dtype = D::BF16, .head_dim = 129, .tokens = 35},
      {.name = "nhd_page_size_1", .page_size = 1, .num_pages = 80, .tokens = 40},
      {.name = "hnd_bf16_page_size_1",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .page_size = 1,
       .num_pages = 80,
       .tokens = 40},
      {.name = "nhd_f16_page_size_3", .dtype = D::F16, .head_dim = 5, .page_size = 3, .num_pages = 20, .tokens = 30},
      {.name = "hnd_repeated_sources", .layout = L::Hnd, .tokens = 41, .repeat_sources = true},
      {.name = "nhd_bf16_one_token", .dtype = D::BF16, .head_dim = 128, .tokens = 1},
      {.name = "hnd_bf16_700_tokens",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .head_dim = 128,
       .kv_heads = 4,
       .num_pages = 90,
       .tokens = 700},
      {.name = "nhd_no_tokens"},
  };
}

using BackendConformancePagedMove = ConformanceTest<MoveCase>;

TEST_P(BackendConformancePagedMove, CopiesEveryHeadsKeyAndValueFromEachSourceSlotToItsDestination) {
  const MoveCase& c = param();
  const MoveData data = move_data(c);
  const Bytes expected = on_reference_device() ? reference_move(c, data) : run_move(cpu_backend(), c, data);
  expect_same_bytes(run_move(backend(), c, data), expected, c.element(), "pages");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformancePagedMove, ::testing::ValuesIn(on_every_device(move_cases())),
                         device_case_name<MoveCase>);

// ===========================================================================
// The page tables of paged_build_step and paged_accounting
// ===========================================================================

/// Host copies of a PagedTables: every column starts as a random int32 (most
/// out of any pool), so that reading a column past a row's pages shows.
struct Tables {
  std::size_t rows = 0;
  std::size_t row_capacity = 0;
  std::size_t page_size = 0;
  std::vector<std::int32_t> block_table;
  std::vector<std::int32_t> lengths;

  Tables(std::size_t rows_, std::size_t row_capacity_, std::size_t page_size_, std::mt19937& rng)
      : rows(rows_), row_capacity(row_capacity_), page_size(page_size_), block_table(rows_ * row_capacity_) {
    for (std::int32_t& id : block_table) id = static_cast<std::int32_t>(rng());
    for (std::size_t r = 0; r < rows; ++r) lengths.push_back(static_cast<std::int32_t>(rng() % 1000));
  }
  std::int32_t& page(std::size_t row, std::size_t column) { return block_table[row * row_capacity + column]; }
};

/// The tables on a backend; `view()` describes them.
struct DeviceTables {
  DeviceBuffer block_table;
  DeviceBuffer lengths;
  const Tables* host;

  DeviceTables(Backend& backend, const Tables& tables)
      : block_table(backend, bytes_of(tables.block_table)), lengths(backend, bytes_of(tables.lengths)), host(&tables) {}
  PagedTables view() const {
    return {.block_table = block_table.as<std::int32_t>(),
            .lengths = lengths.as<std::int32_t>(),
            .rows = host->rows,
            .row_capacity = host->row_capacity,
            .page_size = host->page_size};
  }
};

// ===========================================================================
// paged_build_step
// ===========================================================================

/// One entry of a step: its row's length before it, the new tokens, and
/// whether its partly filled last page is replaced (copy on write).
struct StepEntry {
  std::size_t old_length = 0;
  std::size_t new_tokens = 0;
  bool replace_last = false;
};

struct StepCase {
  std::string name;
  std::size_t page_size = 16;
  std::size_t rows = 8;
  std::size_t row_capacity = 8;
  std::size_t num_pages = 1000;
  std::vector<StepEntry> entries = {};  ///< listed entries; then `random_entries` more
  std::size_t random_entries = 0;       ///< lengths in [0, 3 * page_size], new tokens in [0, 2 * page_size]
};

struct StepData {
  Tables tables;
  std::vector<std::int32_t> entry_rows, entry_lengths, entry_new, update_indptr, update_cols, update_pages;
  std::size_t total_new = 0;
  std::size_t total_pages = 0;
  Bytes slot_mapping, kv_indptr, kv_indices, kv_last_page_len, qo_indptr;  ///< random before the step
};

/// Random tables; the entries on distinct rows in random order; each
/// entry's updates give its new columns (and, for replace_last, its partly
/// filled last column) fresh random pages, in shuffled order.
StepData step_data(const StepCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  std::mt19937 rng(seed);
  std::vector<StepEntry> entries = c.entries;
  for (std::size_t i = 0; i < c.random_entries; ++i) {
    entries.push_back({.old_length = rng() % (3 * c.page_size + 1),
                       .new_tokens = rng() % (2 * c.page_size + 1),
                       .replace_last = rng() % 3 == 0});
  }
  EXPECT_LE(entries.size(), c.rows) << "more entries than rows";
  StepData data{Tables(c.rows, c.row_capacity, c.page_size, rng), {}, {}, {}, {}, {}, {}, 0, 0, {}, {}, {}, {}, {}};
  std::vector<std::int32_t> rows(c.rows);
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  data.update_indptr.push_back(0);
  for (std::size_t b = 0; b < entries.size(); ++b) {
    const StepEntry& e = entries[b];
    const auto row = static_cast<std::size_t>(rows[b]);
    const std::size_t length = e.old_length + e.new_tokens;
    const std::size_t old_pages = pages_for(e.old_length, c.page_size);
    EXPECT_LE(pages_for(length, c.page_size), c.row_capacity) << "entry " << b << " does not fit its row";
    data.tables.lengths[row] = static_cast<std::int32_t>(e.old_length);
    for (std::size_t j = 0; j < old_pages; ++j)
      data.tables.page(row, j) = static_cast<std::int32_t>(rng() % c.num_pages);
    std::vector<std::int32_t> columns;
    if (e.replace_last && e.new_tokens > 0 && e.old_length % c.page_size != 0) {
      columns.push_back(static_cast<std::int32_t>(old_pages - 1));
    }
    for (std::size_t j = old_pages; j < pages_for(length, c.page_size); ++j) {
      columns.push_back(static_cast<std::int32_t>(j));
    }
    std::shuffle(columns.begin(), columns.end(), rng);
    for (const std::int32_t column : columns) {
      data.update_cols.push_back(column);
      data.update_pages.push_back(static_cast<std::int32_t>(rng() % c.num_pages));
    }
    data.update_indptr.push_back(static_cast<std::int32_t>(data.update_cols.size()));
    data.entry_rows.push_back(static_cast<std::int32_t>(row));
    data.entry_lengths.push_back(static_cast<std::int32_t>(length));
    data.entry_new.push_back(static_cast<std::int32_t>(e.new_tokens));
    data.total_new += e.new_tokens;
    data.total_pages += pages_for(length, c.page_size);
  }
  const std::size_t batch = entries.size();
  data.slot_mapping = random_bytes(8 * data.total_new, seed + 1);
  data.kv_indptr = random_bytes(4 * (batch + 1), seed + 2);
  data.kv_indices = random_bytes(4 * data.total_pages, seed + 3);
  data.kv_last_page_len = random_bytes(4 * batch, seed + 4);
  data.qo_indptr = random_bytes(4 * (batch + 1), seed + 5);
  return data;
}

/// What a step leaves: the tables, then the outputs.
struct StepResult {
  Bytes block_table, lengths, slot_mapping, kv_indptr, kv_indices, kv_last_page_len, qo_indptr;
};

template <class T>
void put(Bytes& bytes, std::size_t index, T value) {
  std::memcpy(bytes.data() + index * sizeof(T), &value, sizeof(T));
}

/// Every entry's updates first, then, entry by entry, its pages and slots
/// from the updated row; offsets and indptrs by running sums. An empty
/// batch writes nothing.
StepResult reference_step(const StepData& data) {
  Tables tables = data.tables;
  StepResult out{{}, {}, data.slot_mapping, data.kv_indptr, data.kv_indices, data.kv_last_page_len, data.qo_indptr};
  const std::size_t batch = data.entry_rows.size();
  const std::size_t page_size = tables.page_size;
  for (std::size_t b = 0; b < batch; ++b) {
    for (auto k = static_cast<std::size_t>(data.update_indptr[b]);
         k < static_cast<std::size_t>(data.update_indptr[b + 1]); ++k) {
      tables.page(static_cast<std::size_t>(data.entry_rows[b]), static_cast<std::size_t>(data.update_cols[k])) =
          data.update_pages[k];
    }
    tables.lengths[static_cast<std::size_t>(data.entry_rows[b])] = data.entry_lengths[b];
  }
  std::int32_t pages_before = 0;
  std::int32_t tokens_before = 0;
  if (batch > 0) {
    put<std::int32_t>(out.kv_indptr, 0, 0);
    put<std::int32_t>(out.qo_indptr, 0, 0);
  }
  for (std::size_t b = 0; b < batch; ++b) {
    const auto row = static_cast<std::size_t>(data.entry_rows[b]);
    const auto length = static_cast<std::size_t>(data.entry_lengths[b]);
    const auto fresh = static_cast<std::size_t>(data.entry_new[b]);
    const std::size_t pages = pages_for(length, page_size);
    for (std::size_t j = 0; j < pages; ++j) {
      put<std::int32_t>(out.kv_indices, static_cast<std::size_t>(pages_before) + j, tables.page(row, j));
    }
    for (std::size_t i = 0; i < fresh; ++i) {
      const std::size_t t = length - fresh + i;
      const std::int64_t slot = std::int64_t{tables.page(row, t / page_size)} * static_cast<std::int64_t>(page_size) +
                                static_cast<std::int64_t>(t % page_size);
      put<std::int64_t>(out.slot_mapping, static_cast<std::size_t>(tokens_before) + i, slot);
    }
    pages_before += static_cast<std::int32_t>(pages);
    tokens_before += static_cast<std::int32_t>(fresh);
    put<std::int32_t>(out.kv_indptr, b + 1, pages_before);
    put<std::int32_t>(out.qo_indptr, b + 1, tokens_before);
    put<std::int32_t>(out.kv_last_page_len, b,
                      length == 0 ? 0 : static_cast<std::int32_t>(length - (pages - 1) * page_size));
  }
  out.block_table = bytes_of(tables.block_table);
  out.lengths = bytes_of(tables.lengths);
  return out;
}

StepResult run_step(Backend& backend, const StepData& data) {
  const DeviceTables tables(backend, data.tables);
  const DeviceBuffer entry_rows(backend, bytes_of(data.entry_rows));
  const DeviceBuffer entry_lengths(backend, bytes_of(data.entry_lengths));
  const DeviceBuffer entry_new(backend, bytes_of(data.entry_new));
  const DeviceBuffer update_indptr(backend, bytes_of(data.update_indptr));
  const DeviceBuffer update_cols(backend, bytes_of(data.update_cols));
  const DeviceBuffer update_pages(backend, bytes_of(data.update_pages));
  const DeviceBuffer slot_mapping(backend, data.slot_mapping);
  const DeviceBuffer kv_indptr(backend, data.kv_indptr);
  const DeviceBuffer kv_indices(backend, data.kv_indices);
  const DeviceBuffer kv_last_page_len(backend, data.kv_last_page_len);
  const DeviceBuffer qo_indptr(backend, data.qo_indptr);
  PagedStepBuild build;
  build.tables = tables.view();
  build.batch = data.entry_rows.size();
  build.entry_rows = entry_rows.as<std::int32_t>();
  build.entry_lengths = entry_lengths.as<std::int32_t>();
  build.entry_new = entry_new.as<std::int32_t>();
  build.update_indptr = update_indptr.as<std::int32_t>();
  build.update_cols = update_cols.as<std::int32_t>();
  build.update_pages = update_pages.as<std::int32_t>();
  build.slot_mapping = slot_mapping.as<std::int64_t>();
  build.kv_indptr = kv_indptr.as<std::int32_t>();
  build.kv_indices = kv_indices.as<std::int32_t>();
  build.kv_last_page_len = kv_last_page_len.as<std::int32_t>();
  build.qo_indptr = qo_indptr.as<std::int32_t>();
  backend.paged_build_step(build, Stream{});
  return {tables.block_table.read(), tables.lengths.read(),   slot_mapping.read(), kv_indptr.read(),
          kv_indices.read(),         kv_last_page_len.read(), qo_indptr.read()};
}

std::vector<StepCase> step_cases() {
  return {
      {.name = "batch_0"},
      {.name = "batch_1_decode_mid_page", .entries = {{.old_length = 37, .new_tokens = 1}}},
      {.name = "batch_1_decode_opens_a_page", .entries = {{.old_length = 32, .new_tokens = 1}}},
      {.name = "batch_1_decode_fills_a_page", .entries = {{.old_length = 31, .new_tokens = 1}}},
      {.name = "batch_1_prefill_of_an_empty_row", .entries = {{.old_length = 0, .new_tokens = 100}}},
      {.name = "batch_1_empty_sequence", .entries = {{}}},
      {.name = "batch_1_no_new_tokens_on_a_boundary", .entries = {{.old_length = 48}}},
      {.name = "empty_sequences_between_others",
       .entries = {{.old_length = 5, .new_tokens = 3}, {}, {.old_length = 17, .new_tokens = 1}, {}, {}}},
      {.name = "lengths_on_page_boundaries",
       .entries = {{.old_length = 16, .new_tokens = 16},
                   {.old_length = 0, .new_tokens = 32},
                   {.old_length = 31, .new_tokens = 17},
                   {.old_length = 64}}},
      {.name = "copy_on_write_replaces_the_last_column",
       .entries = {{.old_length = 20, .new_tokens = 3, .replace_last = true},
                   {.old_length = 33, .new_tokens = 40, .replace_last = true},
                   {.old_length = 7, .new_tokens = 1, .replace_last = true}}},
      {.name = "page_size_1_decode_and_prefill",
       .page_size = 1,
       .row_capacity = 64,
       .entries = {{.old_length = 10, .new_tokens = 1}, {.old_length = 0, .new_tokens = 40}, {}}},
      {.name = "page_size_1_random_100", .page_size = 1, .rows = 120, .row_capacity = 5, .random_entries = 100},
      {.name = "page_size_16_random_300", .rows = 400, .row_capacity = 5, .random_entries = 300},
      {.name = "page_size_16_random_2000", .rows = 2100, .row_capacity = 5, .random_entries = 2000},
      {.name = "page_size_16_long_prefill",
       .rows = 4,
       .row_capacity = 600,
       .num_pages = 5000,
       .entries = {{.old_length = 9, .new_tokens = 9000, .replace_last = true}, {.old_length = 3, .new_tokens = 1}}},
      {.name = "every_row_in_the_step", .rows = 50, .random_entries = 50},
  };
}

using BackendConformancePagedStepBuild = ConformanceTest<StepCase>;

TEST_P(BackendConformancePagedStepBuild, AppliesEachEntrysUpdatesAndLengthLeavingOtherRowsAndColumns) {
  const StepData data = step_data(param());
  const StepResult expected = on_reference_device() ? reference_step(data) : run_step(cpu_backend(), data);
  const StepResult actual = run_step(backend(), data);
  expect_same_bytes(actual.block_table, expected.block_table, 4, "block_table");
  expect_same_bytes(actual.lengths, expected.lengths, 4, "lengths");
}

TEST_P(BackendConformancePagedStepBuild, ListsEachEntrysUpdatedPagesAndNewTokensSlots) {
  const StepData data = step_data(param());
  const StepResult expected = on_reference_device() ? reference_step(data) : run_step(cpu_backend(), data);
  const StepResult actual = run_step(backend(), data);
  expect_same_bytes(actual.kv_indptr, expected.kv_indptr, 4, "kv_indptr");
  expect_same_bytes(actual.kv_indices, expected.kv_indices, 4, "kv_indices");
  expect_same_bytes(actual.kv_last_page_len, expected.kv_last_page_len, 4, "kv_last_page_len");
  expect_same_bytes(actual.qo_indptr, expected.qo_indptr, 4, "qo_indptr");
  expect_same_bytes(actual.slot_mapping, expected.slot_mapping, 8, "slot_mapping");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformancePagedStepBuild, ::testing::ValuesIn(on_every_device(step_cases())),
                         device_case_name<StepCase>);

// ===========================================================================
// paged_accounting
// ===========================================================================

/// One live row: its length, and how many of its first full pages it shares
/// with the live row before it (a fork's prefix); `fork` shares every page
/// of the row before it, the partly filled last one too (a fork before its
/// copy on write), and takes its length.
struct LiveRow {
  std::size_t length = 0;
  std::size_t shared_pages = 0;
  bool fork = false;
};

struct AccountingCase {
  std::string name;
  std::size_t page_size = 16;
  std::size_t num_pages = 64;
  std::size_t page_bytes = 4096;
  std::size_t rows = 10;  ///< rows of the tables: the live rows, then dead ones
  std::size_t row_capacity = 8;
  std::vector<LiveRow> live = {};
  std::size_t random_live = 0;  ///< more live rows: lengths in [0, 3 * page_size], half sharing a prefix
  std::size_t asked = 0;        ///< rows asked about, drawn from every row (live or not) with repeats
  std::size_t groups = 1;       ///< layer groups: rows r + g * rows of group g, of row r's length
  std::size_t null_columns = 0;  ///< of each live row in groups past the first: its first columns name the null page
};

std::int32_t null_page(const AccountingCase& c) {
  return c.null_columns > 0 ? static_cast<std::int32_t>(c.num_pages - 1) : -1;
}

struct AccountingData {
  Tables tables;
  std::vector<std::int32_t> rows;
  std::vector<std::int32_t> live_rows;
  Bytes per_sequence, pool, page_refs, page_fill;  ///< random before the call
};

/// Live rows on shuffled table rows with distinct fresh pages from a
/// shuffled pool, but for the prefixes they share; dead rows keep random
/// columns and lengths.
AccountingData accounting_data(const AccountingCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  std::mt19937 rng(seed);
  std::vector<LiveRow> live = c.live;
  for (std::size_t i = 0; i < c.random_live; ++i) {
    live.push_back({.length = rng() % (3 * c.page_size + 1), .shared_pages = rng() % 2 == 0 ? rng() % 3 : 0});
  }
  EXPECT_LE(live.size(), c.rows) << "more live rows than rows";
  AccountingData data{Tables(c.rows * c.groups, c.row_capacity, c.page_size, rng), {}, {}, {}, {}, {}, {}};
  std::vector<std::int32_t> table_rows(c.rows);
  std::iota(table_rows.begin(), table_rows.end(), 0);
  std::shuffle(table_rows.begin(), table_rows.end(), rng);
  std::vector<std::int32_t> pool(c.num_pages - (c.null_columns > 0 ? 1 : 0));  // the last page may be the null one
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::size_t next_fresh = 0;
  for (std::size_t i = 0; i < live.size(); ++i) {
    const auto row = static_cast<std::size_t>(table_rows[i]);
    const bool fork = live[i].fork && i > 0;
    const std::size_t length =
        fork ? static_cast<std::size_t>(data.tables.lengths[static_cast<std::size_t>(table_rows[i - 1])])
             : live[i].length;
    const std::size_t pages = pages_for(length, c.page_size);
    EXPECT_LE(pages, c.row_capacity) << "live row " << i << " does not fit its row";
    std::size_t shared = 0;
    if (i > 0) {
      const auto parent = static_cast<std::size_t>(table_rows[i - 1]);
      const auto parent_length = static_cast<std::size_t>(data.tables.lengths[parent]);
      shared = fork ? pages : std::min({live[i].shared_pages, parent_length / c.page_size, length / c.page_size});
      for (std::size_t j = 0; j < shared; ++j) data.tables.page(row, j) = data.tables.page(parent, j);
    }
    for (std::size_t j = shared; j < pages; ++j) {
      EXPECT_LT(next_fresh, pool.size()) << "the pool is too small for the case";
      data.tables.page(row, j) = pool[next_fresh++ % pool.size()];
    }
    data.tables.lengths[row] = static_cast<std::int32_t>(length);
    data.live_rows.push_back(static_cast<std::int32_t>(row));
    for (std::size_t g = 1; g < c.groups; ++g) {
      const std::size_t other = row + g * c.rows;
      for (std::size_t j = 0; j < pages; ++j) {
        data.tables.page(other, j) = j < c.null_columns ? null_page(c) : pool[next_fresh++ % pool.size()];
      }
      data.tables.lengths[other] = static_cast<std::int32_t>(length);
    }
  }
  for (std::size_t b = 0; b < c.asked; ++b) {  // with groups only live rows (their columns are read)
    data.rows.push_back(c.groups > 1 || c.null_columns > 0 ? data.live_rows[rng() % data.live_rows.size()]
                                                           : static_cast<std::int32_t>(rng() % c.rows));
  }
  data.per_sequence = random_bytes(8 * kPagedSequenceFields * c.asked, seed + 1);
  data.pool = random_bytes(8 * kPagedPoolFields, seed + 2);
  data.page_refs = random_bytes(4 * c.num_pages, seed + 3);
  data.page_fill = random_bytes(4 * c.num_pages, seed + 4);
  return data;
}

struct AccountingResult {
  Bytes per_sequence, pool;
};

/// Per asked row its length's pages, bytes and slack; over the live rows a
/// map from each page to the fills of its holders: the pool's counts are
/// the map's size, the pages with two holders or more, the sum of the
/// largest fill of each page.
AccountingResult reference_accounting(const AccountingCase& c, const AccountingData& data) {
  AccountingResult out{data.per_sequence, data.pool};
  const Tables& tables = data.tables;
  const auto page_at = [&](std::size_t row, std::size_t g, std::size_t j) {
    return tables.block_table[(row + g * c.rows) * tables.row_capacity + j];
  };
  for (std::size_t b = 0; b < data.rows.size(); ++b) {
    const auto row = static_cast<std::size_t>(data.rows[b]);
    const std::int64_t length = tables.lengths[row];
    std::int64_t pages = 0, slots = 0;
    for (std::size_t g = 0; g < c.groups; ++g) {
      for (std::size_t j = 0; j < pages_for(static_cast<std::size_t>(length), c.page_size); ++j) {
        if (c.groups == 1 && c.null_columns == 0) {  // the plain cache: every column counts
          ++pages;
          continue;
        }
        if (page_at(row, g, j) == null_page(c)) continue;
        ++pages;
        slots += static_cast<std::int64_t>(std::min(c.page_size, static_cast<std::size_t>(length) - j * c.page_size));
      }
    }
    if (c.groups == 1 && c.null_columns == 0) slots = length;
    put<std::int64_t>(out.per_sequence, 4 * b, length);
    put<std::int64_t>(out.per_sequence, 4 * b + 1, pages);
    put<std::int64_t>(out.per_sequence, 4 * b + 2, pages * static_cast<std::int64_t>(c.page_bytes));
    put<std::int64_t>(out.per_sequence, 4 * b + 3, pages * static_cast<std::int64_t>(c.page_size) - slots);
  }
  std::map<std::int32_t, std::vector<std::size_t>> holders;
  for (const std::int32_t live : data.live_rows) {
    const auto row = static_cast<std::size_t>(live);
    const auto length = static_cast<std::size_t>(tables.lengths[row]);
    for (std::size_t g = 0; g < c.groups; ++g) {
      for (std::size_t j = 0; j * c.page_size < length; ++j) {
        if (page_at(row, g, j) == null_page(c)) continue;
        holders[page_at(row, g, j)].push_back(std::min(c.page_size, length - j * c.page_size));
      }
    }
  }
  std::int64_t shared = 0;
  std::int64_t tokens = 0;
  for (const auto& [page, fills] : holders) {
    shared += fills.size() > 1 ? 1 : 0;
    tokens += static_cast<std::int64_t>(*std::max_element(fills.begin(), fills.end()));
  }
  const auto referenced = static_cast<std::int64_t>(holders.size());
  put<std::int64_t>(out.pool, 0, referenced);
  put<std::int64_t>(out.pool, 1, shared);
  put<std::int64_t>(out.pool, 2, tokens);
  put<std::int64_t>(out.pool, 3, referenced * static_cast<std::int64_t>(c.page_bytes));
  return out;
}

AccountingResult run_accounting(Backend& backend, const AccountingCase& c, const AccountingData& data) {
  const DeviceTables tables(backend, data.tables);
  const DeviceBuffer rows(backend, bytes_of(data.rows));
  const DeviceBuffer live_rows(backend, bytes_of(data.live_rows));
  const DeviceBuffer page_refs(backend, data.page_refs);
  const DeviceBuffer page_fill(backend, data.page_fill);
  const DeviceBuffer per_sequence(backend, data.per_sequence);
  const DeviceBuffer pool(backend, data.pool);
  PagedAccounting accounting;
  accounting.tables = tables.view();
  accounting.num_pages = c.num_pages;
  accounting.page_bytes = c.page_bytes;
  accounting.groups = c.groups;
  accounting.group_rows = c.rows;
  accounting.null_page = null_page(c);
  accounting.rows = rows.as<std::int32_t>();
  accounting.batch = data.rows.size();
  accounting.live_rows = live_rows.as<std::int32_t>();
  accounting.live = data.live_rows.size();
  accounting.page_refs = page_refs.as<std::uint32_t>();
  accounting.page_fill = page_fill.as<std::uint32_t>();
  accounting.per_sequence = per_sequence.as<std::int64_t>();
  accounting.pool = pool.as<std::int64_t>();
  backend.paged_accounting(accounting, Stream{});
  expect_same_bytes(tables.block_table.read(), bytes_of(data.tables.block_table), 4, "block_table (read only)");
  expect_same_bytes(tables.lengths.read(), bytes_of(data.tables.lengths), 4, "lengths (read only)");
  return {per_sequence.read(), pool.read()};
}

std::vector<AccountingCase> accounting_cases() {
  return {
      {.name = "no_live_rows_and_no_asked_rows"},
      {.name = "no_live_rows", .asked = 5},
      {.name = "one_row_mid_page", .live = {{.length = 37}}, .asked = 3},
      {.name = "one_empty_row", .live = {{.length = 0}}, .asked = 3},
      {.name = "lengths_on_page_boundaries",
       .live = {{.length = 16}, {.length = 32}, {.length = 48}, {.length = 0}},
       .asked = 8},
      {.name = "rows_sharing_full_pages",
       .live = {{.length = 40}, {.length = 45, .shared_pages = 2}, {.length = 33, .shared_pages = 1}, {.length = 5}},
       .asked = 6},
      {.name = "fork_shares_the_partial_last_page",
       .live = {{.length = 37}, {.fork = true}, {.fork = true}, {.length = 16, .shared_pages = 1}},
       .asked = 6},
      {.name = "page_size_1",
       .page_size = 1,
       .num_pages = 200,
       .row_capacity = 64,
       .live = {{.length = 50}, {.length = 30, .shared_pages = 20}, {.length = 0}, {.length = 1}},
       .asked = 6},
      {.name = "page_size_1_random",
       .page_size = 1,
       .num_pages = 400,
       .rows = 150,
       .row_capacity = 4,
       .random_live = 120,
       .asked = 200},
      {.name = "page_size_16_random_wider_than_a_block",
       .num_pages = 3000,
       .rows = 1500,
       .row_capacity = 4,
       .random_live = 1400,
       .asked = 1100},
      {.name = "a_row_longer_than_a_warp",
       .num_pages = 2000,
       .rows = 3,
       .row_capacity = 1500,
       .live = {{.length = 16 * 1200 + 3}, {.length = 16 * 700, .shared_pages = 650}},
       .asked = 3},
      {.name = "page_bytes_above_2_to_the_32",
       .page_bytes = std::size_t{3} << 32,
       .live = {{.length = 100}, {.length = 20, .shared_pages = 1}},
       .asked = 2},
      {.name = "live_rows_not_asked", .random_live = 8, .asked = 0},
      {.name = "asked_rows_repeated_and_dead", .rows = 40, .random_live = 10, .asked = 60},
      {.name = "three_layer_groups",
       .num_pages = 400,
       .live = {{.length = 40}, {.length = 45, .shared_pages = 2}, {.fork = true}, {.length = 5}},
       .asked = 6,
       .groups = 3},
      {.name = "window_groups_naming_the_null_page",
       .num_pages = 400,
       .rows = 20,
       .random_live = 12,
       .asked = 16,
       .groups = 2,
       .null_columns = 2},
  };
}

using BackendConformancePagedAccounting = ConformanceTest<AccountingCase>;

TEST_P(BackendConformancePagedAccounting, CountsEachAskedRowsTokensPagesBytesAndSlack) {
  const AccountingCase& c = param();
  const AccountingData data = accounting_data(c);
  const AccountingResult expected =
      on_reference_device() ? reference_accounting(c, data) : run_accounting(cpu_backend(), c, data);
  expect_same_bytes(run_accounting(backend(), c, data).per_sequence, expected.per_sequence, 8, "per_sequence");
}

TEST_P(BackendConformancePagedAccounting, CountsThePoolsDistinctAndSharedPagesAndEachPagesTokensOnce) {
  const AccountingCase& c = param();
  const AccountingData data = accounting_data(c);
  const AccountingResult expected =
      on_reference_device() ? reference_accounting(c, data) : run_accounting(cpu_backend(), c, data);
  expect_same_bytes(run_accounting(backend(), c, data).pool, expected.pool, 8, "pool");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformancePagedAccounting, ::testing::ValuesIn(on_every_device(accounting_cases())),
                         device_case_name<AccountingCase>);

}  // namespace
}  // namespace micache::testing::conformance
