// Private: the device step of heavy-hitter eviction, ranking scores so only the chosen indices come back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache::detail {

/// For each row of `scores` (`[n]`: one row; `[rows, n]`: one per row; a
/// float dtype, validated by the caller), the `k` best-scored of the row's
/// first `candidates` entries (k <= candidates <= n <= kMaxTopKColumns), in
/// the order of detail::top_k_key: larger first, ties to the lower index, NaN
/// below every number. One Backend::top_k_head_mean launch over all rows on
/// `stream`, then one read of the rows * k indices back to the host (the only
/// wait); k = 0 gives empty rows without touching the device.
/// Error: OutOfMemory for the device results (nothing else is allocated).
std::vector<std::vector<std::int32_t>> top_scored(const Tensor& scores, std::size_t candidates, std::size_t k,
                                                  Stream stream);

}  // namespace micache::detail
