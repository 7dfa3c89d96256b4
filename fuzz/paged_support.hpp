// Shared by the PagedKvCache fuzz targets: the device accounting kernel checked against the host's counters.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz/fuzz_support.hpp"
#include "micache/paged_kv_cache.hpp"

namespace micache::fuzz {

/// Fails unless `cache.device_accounting(ids)` gives each sequence's sequence_stats (tokens, pages, bytes, slack) and
/// the pool's pool_stats (pages used, pages shared, tokens, bytes used). `after` names the call checked.
inline void check_device_accounting(const PagedKvCache& cache, std::span<const SequenceId> ids, const char* after) {
  const PagedDeviceAccounting acc = cache.device_accounting(ids);
  const std::vector<std::int64_t> per = acc.per_sequence.to_host_i64();
  const std::vector<std::int64_t> pool = acc.pool.to_host_i64();
  check(per.size() == 4 * ids.size() && pool.size() == 4, "after {}: device_accounting of {} and {} entries", after,
        per.size(), pool.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const PagedSequenceStats s = cache.sequence_stats(ids[i]);
    const std::int64_t want[4] = {static_cast<std::int64_t>(s.tokens), static_cast<std::int64_t>(s.pages),
                                  static_cast<std::int64_t>(s.bytes), static_cast<std::int64_t>(s.slack)};
    check(std::equal(want, want + 4, per.begin() + static_cast<std::ptrdiff_t>(4 * i)),
          "after {}: device_accounting of sequence {}: ({}, {}, {}, {}), sequence_stats ({}, {}, {}, {})", after,
          static_cast<std::uint64_t>(ids[i]), per[4 * i], per[4 * i + 1], per[4 * i + 2], per[4 * i + 3], want[0],
          want[1], want[2], want[3]);
  }
  const PagedPoolStats stats = cache.pool_stats();
  check(pool[0] == static_cast<std::int64_t>(stats.pages_used) &&
            pool[1] == static_cast<std::int64_t>(stats.pages_shared) &&
            pool[2] == static_cast<std::int64_t>(stats.tokens) &&
            pool[3] == static_cast<std::int64_t>(stats.bytes_used),
        "after {}: device_accounting pool ({}, {}, {}, {}), pool_stats ({}, {}, {}, {})", after, pool[0], pool[1],
        pool[2], pool[3], stats.pages_used, stats.pages_shared, stats.tokens, stats.bytes_used);
}

}  // namespace micache::fuzz
