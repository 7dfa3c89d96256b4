// Plain descriptions of work on compressed vectors (encode, score, attend, decode), passed to backends.
// C++17: included by .cu files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/backend/detail/record_layout.hpp"
#include "micache/dtype.hpp"

namespace micache {

/// Compressed vectors of `heads` heads kept in a ring of records, with the
/// quantiser tables that read them (every pointer is memory of the backend's device).
///
/// The record of logical token t (0 = oldest) of head h is `layout.record_bytes`
/// bytes at `records + (h * capacity + (start + t) % capacity) * layout.record_bytes`
/// (format: detail::RecordLayout). Head h's rotation is the 2p sign bits at
/// `signs + h * (2p / 32)` (p = layout.padded_dim, at least 32 bits per head:
/// `sign_words` words); its QJL matrix, when `layout.projections` > 0, is the
/// m x p row-major block at `projections + h * m * p`. `centroids` (2^bits) and
/// `boundaries` (2^bits - 1) are shared by every head.
struct RecordRing {
  detail::RecordLayout layout{};
  std::uint8_t* records = nullptr;
  std::size_t heads = 0;
  std::size_t capacity = 0;
  std::size_t start = 0;
  const std::uint32_t* signs = nullptr;
  std::size_t sign_words = 0;
  const float* centroids = nullptr;
  const float* boundaries = nullptr;
  const float* projections = nullptr;
};

/// Encodes `tokens` vectors per head of `input` into logical slots `[first,
/// first + tokens)` of `ring`. Vector (h, t) is `layout.dim` consecutive
/// elements of `dtype` (F32, F16 or BF16, all finite) starting at element
/// `h * head_stride + t * token_stride` of `input`.
struct RecordEncode {
  RecordRing ring;
  std::size_t first = 0;
  std::size_t tokens = 0;
  const void* input = nullptr;
  DType dtype = DType::F32;
  std::size_t head_stride = 0;
  std::size_t token_stride = 0;
};

/// Queries against logical key records `[0, tokens)` of `keys`.
///
/// `queries` is `[query_heads, layout.dim]` dense elements of `dtype`; query
/// head q reads key head q / group_size. Each query is rotated (and, with
/// `qjl`, projected) once; the score of token t is `scale` times
/// detail::estimate_mse (with `inv_alpha`) or detail::estimate_qjl.
struct RecordQuery {
  RecordRing keys;
  std::size_t tokens = 0;
  const void* queries = nullptr;
  DType dtype = DType::F32;
  std::size_t query_heads = 0;
  std::size_t group_size = 1;
  bool qjl = false;
  float inv_alpha = 1.0f;
  float scale = 1.0f;
};

}  // namespace micache
