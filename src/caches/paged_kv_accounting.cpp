// PagedKvCache::device_accounting: the sequences' and the pool's counters computed on the device from the
// resident page tables, by one Backend::paged_accounting launch.
#include <vector>

#include "micache/backend/backend.hpp"
#include "micache/paged_kv_cache.hpp"
#include "src/caches/packed_buffer.hpp"

namespace micache {

using detail::aligned16;

PagedDeviceAccounting PagedKvCache::device_accounting(std::span<const SequenceId> ids) const {
  // The rows asked about, then every live row: the only bytes that cross.
  std::vector<std::int32_t> rows;
  rows.reserve(ids.size() + sequences_.size());
  for (const SequenceId id : ids) rows.push_back(sequence_or_throw(id, "device_accounting").row);
  for (const auto& [id, s] : sequences_) rows.push_back(s.row);
  const std::size_t batch = ids.size(), live = sequences_.size();
  // One buffer: per_sequence (I64), pool (I64), the scratch, the rows.
  const std::size_t pool_at = aligned16(8 * kPagedSequenceFields * batch);
  const std::size_t scratch_at = aligned16(pool_at + 8 * kPagedPoolFields);
  const std::size_t rows_at = aligned16(scratch_at + kPagedAccountingScratchBytesPerPage * num_pages_);
  const Tensor buffer = Tensor::empty({rows_at + 4 * rows.size()}, DType::U8, device_, stream_);
  auto* base = static_cast<std::byte*>(const_cast<void*>(buffer.data()));
  if (!rows.empty()) backend_->copy_host_to_device(base + rows_at, rows.data(), 4 * rows.size(), stream_);
  const auto* row_list = reinterpret_cast<const std::int32_t*>(base + rows_at);
  auto* scratch = reinterpret_cast<std::uint32_t*>(base + scratch_at);
  backend_->paged_accounting(PagedAccounting{.tables = tables(),
                                             .num_pages = num_pages_,
                                             .page_bytes = page_bytes_,
                                             .groups = groups_.groups(),
                                             .group_rows = config_.max_sequences,
                                             .null_page = null_page_,
                                             .rows = row_list,
                                             .batch = batch,
                                             .live_rows = row_list + batch,
                                             .live = live,
                                             .page_refs = scratch,
                                             .page_fill = scratch + num_pages_,
                                             .per_sequence = reinterpret_cast<std::int64_t*>(base),
                                             .pool = reinterpret_cast<std::int64_t*>(base + pool_at)},
                             stream_);
  return PagedDeviceAccounting{
      .per_sequence = detail::packed_view(buffer, 0, {batch, kPagedSequenceFields}, DType::I64),
      .pool = detail::packed_view(buffer, pool_at, {kPagedPoolFields}, DType::I64)};
}

}  // namespace micache
