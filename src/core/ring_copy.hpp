// Private: token copies between ring-buffer tensors, shared by KVCache and CompressedHeads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/registry.hpp"
#include "micache/tensor.hpp"

namespace micache::detail {

/// Which tokens a ring copy moves: `tokens` tokens from slot `src_start` of
/// the source (or, with `src_tokens`, the listed logical indices, on the
/// device) to slots from `dst_start` of the destination.
struct RingCopy {
  std::size_t src_start = 0;
  std::size_t dst_start = 0;
  std::size_t tokens = 0;
  const std::int32_t* src_tokens = nullptr;
};

/// Copies between ring tensors `[..., capacity, token]` whose leading axes
/// (the planes) and last axis agree: `count` buffer pairs in one backend
/// launch (see TokenCopy) on the destination's stream. The capacity is the
/// second-to-last axis.
inline void copy_rings(const Tensor* const* src, Tensor* const* dst, std::size_t count, const RingCopy& what) {
  const Tensor& first = *src[0];
  if (what.tokens == 0 || first.numel() == 0 || dst[0]->numel() == 0) return;  // nothing to move
  const std::size_t axis = first.rank() - 2;
  TokenCopy copy;
  copy.buffers = count;
  for (std::size_t b = 0; b < count; ++b) {
    copy.src[b] = src[b]->data();
    copy.dst[b] = dst[b]->mutable_data();
  }
  copy.src_capacity = first.dim(axis);
  copy.src_start = what.src_start;
  copy.dst_capacity = dst[0]->dim(axis);
  copy.dst_start = what.dst_start;
  copy.planes = first.numel() / (first.dim(axis) * first.dim(axis + 1));
  copy.tokens = what.tokens;
  copy.token_bytes = first.dim(axis + 1) * dtype_size(first.dtype());
  copy.src_tokens = what.src_tokens;
  backend_for(dst[0]->device()).copy_tokens(copy, dst[0]->stream());
}

/// One buffer pair.
inline void copy_ring(const Tensor& src, Tensor& dst, const RingCopy& what) {
  const Tensor* source = &src;
  Tensor* target = &dst;
  copy_rings(&source, &target, 1, what);
}

}  // namespace micache::detail
