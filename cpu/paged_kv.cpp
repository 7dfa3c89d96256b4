#include <cstring>

#include "cpu/cpu_backend.hpp"

namespace micache {
namespace {

// One head's head_dim elements of one token are contiguous in both layouts
// and in the dense inputs and outputs: every copy below moves such a row.
std::size_t row_bytes(const PagedPages& pages) { return pages.head_dim * dtype_size(pages.dtype); }

}  // namespace

// Memory access: per token with a slot, per head, one row of its key and one
// of its value into the page; tokens with a negative slot are skipped.
void CpuBackend::paged_write(const PagedWrite& write, Stream stream) {
  require_live(stream);
  const PagedPages& pages = write.pages;
  const std::size_t element_bytes = dtype_size(pages.dtype);
  const std::size_t bytes = row_bytes(pages);
  auto* out = static_cast<std::byte*>(pages.data);
  const void* sources[2] = {write.keys, write.values};
  for (std::size_t t = 0; t < write.tokens; ++t) {
    const std::int64_t slot = write.slot_mapping[t];
    if (slot < 0) continue;
    const std::size_t page = static_cast<std::size_t>(slot) / pages.page_size;
    const std::size_t offset = static_cast<std::size_t>(slot) % pages.page_size;
    for (std::size_t kind = 0; kind < 2; ++kind) {
      const auto* in = static_cast<const std::byte*>(sources[kind]) + t * write.token_stride * element_bytes;
      for (std::size_t h = 0; h < pages.kv_heads; ++h) {
        std::memcpy(out + pages.element(page, kind, offset, h, 0) * element_bytes, in + h * bytes, bytes);
      }
    }
  }
}

// Memory access: per head, per token, one row of its key and one of its
// value out of the page into the dense [kv_heads, tokens, head_dim] outputs.
void CpuBackend::paged_gather(const PagedGather& gather, Stream stream) {
  require_live(stream);
  const PagedPages& pages = gather.pages;
  const std::size_t element_bytes = dtype_size(pages.dtype);
  const std::size_t bytes = row_bytes(pages);
  const auto* in = static_cast<const std::byte*>(pages.data);
  void* targets[2] = {gather.keys, gather.values};
  for (std::size_t kind = 0; kind < 2; ++kind) {
    auto* out = static_cast<std::byte*>(targets[kind]);
    for (std::size_t h = 0; h < pages.kv_heads; ++h) {
      for (std::size_t t = 0; t < gather.tokens; ++t) {
        const std::size_t page = static_cast<std::size_t>(gather.page_ids[t / pages.page_size]);
        std::memcpy(out + (h * gather.tokens + t) * bytes,
                    in + pages.element(page, kind, t % pages.page_size, h, 0) * element_bytes, bytes);
      }
    }
  }
}

}  // namespace micache
