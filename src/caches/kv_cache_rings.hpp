// Private: the ring-buffer helpers KVCache's storage and its compaction share.
#pragma once

#include <cstddef>

#include "micache/stream.hpp"
#include "micache/tensor.hpp"
#include "src/core/ring_copy.hpp"

namespace micache::detail {

/// A new `[batch, kv_heads, capacity, head_dim]` buffer shaped as `like`,
/// allocated on `stream`. Error: OutOfMemory.
inline Tensor ring_buffer(const Tensor& like, std::size_t capacity, Stream stream) {
  return Tensor::empty({like.dim(0), like.dim(1), capacity, like.dim(3)}, like.dtype(), like.device(), stream);
}

/// Copies the tokens `what` names from the key and value rings into the
/// other two, keys and values together in one launch.
inline void copy_kv(const Tensor& src_keys, const Tensor& src_values, Tensor& dst_keys, Tensor& dst_values,
                    const RingCopy& what) {
  const Tensor* sources[] = {&src_keys, &src_values};
  Tensor* targets[] = {&dst_keys, &dst_values};
  copy_rings(sources, targets, 2, what);
}

}  // namespace micache::detail
