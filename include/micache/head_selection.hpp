// Which batch element and heads an attention query averages over.
#pragma once

#include <cstddef>
#include <vector>

namespace micache {

/// Batch index and heads for an AttentionCache query.
///
/// The default, `{}`, is candle-mi's behaviour: batch 0, mean over all heads.
/// `heads` lists head indices to average instead (any order; summed in
/// ascending index order so that every backend gives the same bits; at most
/// `kMaxListedHeads` unless it names every head; empty means all heads).
/// Errors at query time: Hook when the batch or a head is out of range
/// (`head 5 out of range (heads=2)`); Config when a head is listed twice or
/// more than kMaxListedHeads heads are listed.
struct HeadSelection {
  std::size_t batch = 0;
  std::vector<std::size_t> heads;
};

}  // namespace micache
