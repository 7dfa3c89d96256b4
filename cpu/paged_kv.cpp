#include <cstring>
#include <utility>

#include "cpu/cpu_backend.hpp"

namespace micache {
namespace {

// One head's head_dim elements of one token are contiguous in both layouts
// and in the dense inputs and outputs: every copy below moves such a row.
std::size_t row_bytes(const PagedPages& pages) { return pages.head_dim * dtype_size(pages.dtype); }

// The loop of every paged copy: per token, per kind (keys, then values),
// per head, `rows(kind, head, token)` gives the destination and source of
// the row and the row's bytes are copied; a null destination skips the
// token. Token-major, so a write reads its packed inputs once, in order, and
// fills each NHD slot's heads in order (a head-major loop made 2 x kv_heads
// strided passes: a third of the copy roof on a 32k-token prefill).
template <class Rows>
void copy_rows(const PagedPages& pages, std::size_t tokens, Rows&& rows) {
  const std::size_t bytes = row_bytes(pages);
  for (std::size_t t = 0; t < tokens; ++t) {
    for (std::size_t kind = 0; kind < 2; ++kind) {
      for (std::size_t h = 0; h < pages.kv_heads; ++h) {
        const std::pair<std::byte*, const std::byte*> row = rows(kind, h, t);
        if (row.first != nullptr) std::memcpy(row.first, row.second, bytes);
      }
    }
  }
}

// The byte of element 0 of row (kind, head) of slot `slot` (>= 0) of `pages`.
std::size_t slot_byte(const PagedPages& pages, std::int64_t slot, std::size_t kind, std::size_t head) {
  const auto s = static_cast<std::size_t>(slot);
  return pages.element(s / pages.page_size, kind, s % pages.page_size, head, 0) * dtype_size(pages.dtype);
}

}  // namespace

// Memory access: per token with a slot, per head, one row of its key and one
// of its value into the page; tokens with a negative slot are skipped.
void CpuBackend::paged_write(const PagedWrite& write, Stream stream) {
  require_live(stream);
  const PagedPages& pages = write.pages;
  const std::size_t element_bytes = dtype_size(pages.dtype);
  auto* out = static_cast<std::byte*>(pages.data);
  const void* sources[2] = {write.keys, write.values};
  copy_rows(pages, write.tokens, [&](std::size_t kind, std::size_t h, std::size_t t) {
    const std::int64_t slot = write.slot_mapping[t];
    const auto* in = static_cast<const std::byte*>(sources[kind]) + t * write.token_stride * element_bytes;
    return std::pair<std::byte*, const std::byte*>(slot < 0 ? nullptr : out + slot_byte(pages, slot, kind, h),
                                                   in + h * row_bytes(pages));
  });
}

// Memory access: per token, per head, one row of its key and one of its
// value out of the page into the dense [kv_heads, tokens, head_dim] outputs.
void CpuBackend::paged_gather(const PagedGather& gather, Stream stream) {
  require_live(stream);
  const PagedPages& pages = gather.pages;
  const auto* in = static_cast<const std::byte*>(pages.data);
  void* targets[2] = {gather.keys, gather.values};
  copy_rows(pages, gather.tokens, [&](std::size_t kind, std::size_t h, std::size_t t) {
    const std::int64_t slot =
        static_cast<std::int64_t>(gather.page_ids[t / pages.page_size]) * static_cast<std::int64_t>(pages.page_size) +
        static_cast<std::int64_t>(t % pages.page_size);
    return std::pair<std::byte*, const std::byte*>(
        static_cast<std::byte*>(targets[kind]) + (h * gather.tokens + t) * row_bytes(pages),
        in + slot_byte(pages, slot, kind, h));
  });
}

// Memory access: per token, per head, one row of its key and one of its
// value from the source slot's page to the destination slot's.
void CpuBackend::paged_move(const PagedMove& move, Stream stream) {
  require_live(stream);
  const PagedPages& pages = move.pages;
  auto* data = static_cast<std::byte*>(pages.data);
  copy_rows(pages, move.tokens, [&](std::size_t kind, std::size_t h, std::size_t t) {
    return std::pair<std::byte*, const std::byte*>(data + slot_byte(pages, move.dst_slots[t], kind, h),
                                                   data + slot_byte(pages, move.src_slots[t], kind, h));
  });
}

}  // namespace micache
