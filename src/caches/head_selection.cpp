#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "micache/error.hpp"
#include "src/caches/head_selection_impl.hpp"
#include "src/core/checks.hpp"

namespace micache::detail {

HeadList make_head_list(const HeadSelection& selection, std::size_t n_batch, std::size_t n_heads) {
  require_index(selection.batch, n_batch, "batch", "batch");
  HeadList list;
  if (selection.heads.empty()) {
    list.count = static_cast<std::uint32_t>(n_heads);
    return list;
  }
  std::vector<std::size_t> heads = selection.heads;
  std::sort(heads.begin(), heads.end());
  for (std::size_t i = 0; i < heads.size(); ++i) {
    require_index(heads[i], n_heads, "head", "heads");
    if (i > 0 && heads[i] == heads[i - 1]) {
      throw Error(ErrorCode::Config, fmt::format("head {} selected twice", heads[i]));
    }
  }
  list.count = static_cast<std::uint32_t>(heads.size());
  if (heads.size() == n_heads) {
    return list;  // every head, in order: the unlisted form has no size limit
  }
  if (heads.size() > kMaxListedHeads) {
    throw Error(ErrorCode::Config, fmt::format("{} heads listed; at most {} can be listed (or all {})", heads.size(),
                                               kMaxListedHeads, n_heads));
  }
  list.listed = true;
  std::transform(heads.begin(), heads.end(), list.index, [](std::size_t h) { return static_cast<std::uint16_t>(h); });
  return list;
}

}  // namespace micache::detail
