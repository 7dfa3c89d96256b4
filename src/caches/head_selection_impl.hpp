// Private: turning a HeadSelection into the HeadList backends read.
#pragma once

#include <cstddef>

#include "micache/backend/head_mean_view.hpp"
#include "micache/head_selection.hpp"

namespace micache::detail {

/// Validates `selection` against a pattern with `n_batch` batch elements and
/// `n_heads` heads and returns the heads in ascending order.
/// Errors: Hook for batch or head out of range; Config for a repeated head or
/// more than kMaxListedHeads listed heads that are not all of them.
HeadList make_head_list(const HeadSelection& selection, std::size_t n_batch, std::size_t n_heads);

}  // namespace micache::detail
