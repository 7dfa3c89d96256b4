#include "src/caches/page_hash.hpp"

#define XXH_INLINE_ALL
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

namespace micache::detail {

PageHash hash_page(const PageHash& parent, std::uint64_t salt, std::span<const std::int32_t> tokens,
                   std::span<const std::int32_t> more) noexcept {
  // The streaming state lives on the stack (XXH_STATIC_LINKING_ONLY), so hashing allocates nothing.
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  const std::uint64_t link[3] = {parent.low, parent.high, salt};
  XXH3_128bits_update(&state, link, sizeof(link));
  XXH3_128bits_update(&state, tokens.data(), tokens.size_bytes());
  XXH3_128bits_update(&state, more.data(), more.size_bytes());
  const XXH128_hash_t hash = XXH3_128bits_digest(&state);
  return PageHash{.low = hash.low64, .high = hash.high64};
}

}  // namespace micache::detail
