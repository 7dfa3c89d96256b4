#include <algorithm>
#include <cstdint>

#include "cpu/cpu_backend.hpp"

namespace micache {

// Memory access: entry by entry, its updates into its row and its length,
// then the row's first pages_of(L) columns into kv_indices and the pages of
// its new tokens into their slots; offsets are running sums.
void CpuBackend::paged_build_step(const PagedStepBuild& build, Stream stream) {
  require_live(stream);
  if (build.batch == 0) return;
  const PagedTables& tables = build.tables;
  std::size_t listed_pages = 0;
  std::size_t queries = 0;
  build.kv_indptr[0] = 0;
  build.qo_indptr[0] = 0;
  for (std::size_t b = 0; b < build.batch; ++b) {
    const auto row = static_cast<std::size_t>(build.entry_rows[b]);
    const auto length = static_cast<std::size_t>(build.entry_lengths[b]);
    const auto fresh = static_cast<std::size_t>(build.entry_new[b]);
    for (auto k = static_cast<std::size_t>(build.update_indptr[b]);
         k < static_cast<std::size_t>(build.update_indptr[b + 1]); ++k) {
      tables.page(row, static_cast<std::size_t>(build.update_cols[k])) = build.update_pages[k];
    }
    tables.lengths[row] = build.entry_lengths[b];
    const std::size_t pages = tables.pages_of(length);
    for (std::size_t j = 0; j < pages; ++j) build.kv_indices[listed_pages + j] = tables.page(row, j);
    for (std::size_t i = 0; i < fresh; ++i) build.slot_mapping[queries + i] = tables.slot(row, length - fresh + i);
    listed_pages += pages;
    queries += fresh;
    build.kv_indptr[b + 1] = static_cast<std::int32_t>(listed_pages);
    build.kv_last_page_len[b] = static_cast<std::int32_t>(tables.last_page_len(length));
    build.qo_indptr[b + 1] = static_cast<std::int32_t>(queries);
  }
}

// Memory access: each asked row's length and, with groups or a null page,
// its rows' page ids; the scratch zeroed, then per live row and group the
// ids of its pages (a reference and the fill of each), then the scratch
// summed in page order.
void CpuBackend::paged_accounting(const PagedAccounting& accounting, Stream stream) {
  require_live(stream);
  const PagedTables& tables = accounting.tables;
  const auto page_size = static_cast<std::int64_t>(tables.page_size);
  const auto page_bytes = static_cast<std::int64_t>(accounting.page_bytes);
  for (std::size_t b = 0; b < accounting.batch; ++b) {
    const auto row = static_cast<std::size_t>(accounting.rows[b]);
    const auto length = static_cast<std::size_t>(tables.lengths[row]);
    auto pages = static_cast<std::int64_t>(tables.pages_of(length));
    auto slots = static_cast<std::int64_t>(length);
    if (accounting.groups != 1 || accounting.null_page >= 0) {  // count the columns that hold a page
      pages = 0;
      slots = 0;
      for (std::size_t g = 0; g < accounting.groups; ++g) {
        for (std::size_t j = 0; j < tables.pages_of(length); ++j) {
          if (tables.page(row + g * accounting.group_rows, j) == accounting.null_page) continue;
          ++pages;
          slots += static_cast<std::int64_t>(tables.column_fill(length, j));
        }
      }
    }
    std::int64_t* out = accounting.per_sequence + b * kPagedSequenceFields;
    out[0] = static_cast<std::int64_t>(length);
    out[1] = pages;
    out[2] = pages * page_bytes;
    out[3] = pages * page_size - slots;
  }
  std::fill_n(accounting.page_refs, accounting.num_pages, 0u);
  std::fill_n(accounting.page_fill, accounting.num_pages, 0u);
  for (std::size_t i = 0; i < accounting.live; ++i) {
    const auto row = static_cast<std::size_t>(accounting.live_rows[i]);
    const auto length = static_cast<std::size_t>(tables.lengths[row]);
    for (std::size_t g = 0; g < accounting.groups; ++g) {
      for (std::size_t j = 0; j < tables.pages_of(length); ++j) {
        const std::int32_t id = tables.page(row + g * accounting.group_rows, j);
        if (id == accounting.null_page) continue;
        const auto page = static_cast<std::size_t>(id);
        ++accounting.page_refs[page];
        accounting.page_fill[page] =
            std::max(accounting.page_fill[page], static_cast<std::uint32_t>(tables.column_fill(length, j)));
      }
    }
  }
  std::int64_t referenced = 0;
  std::int64_t shared = 0;
  std::int64_t tokens = 0;
  for (std::size_t p = 0; p < accounting.num_pages; ++p) {
    referenced += accounting.page_refs[p] > 0 ? 1 : 0;
    shared += accounting.page_refs[p] > 1 ? 1 : 0;
    tokens += accounting.page_fill[p];
  }
  accounting.pool[0] = referenced;
  accounting.pool[1] = shared;
  accounting.pool[2] = tokens;
  accounting.pool[3] = referenced * page_bytes;
}

}  // namespace micache
