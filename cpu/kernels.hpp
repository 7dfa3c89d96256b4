// The CPU backend's kernels: the reference every other backend must match bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "micache/backend/compressed_records.hpp"
#include "micache/dtype.hpp"
#include "micache/backend/head_mean_view.hpp"
#include "micache/backend/token_copy.hpp"

namespace micache::cpu {

/// See Backend::convert.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count);

/// See Backend::head_mean.
void head_mean(const HeadMeanView& view, float* out);

/// Output rows head_mean accumulates together for rows of `n_cols` columns:
/// enough that each head's slice of a block of rows is one long sequential
/// read, few enough (at most 64, at most 512 KiB of f32 accumulators) that the
/// block stays in the L2 cache. Callers that hold head means of a block size
/// their buffers by it.
std::size_t head_mean_block_rows(std::size_t n_cols);

/// See Backend::top_k_head_mean.
void top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights);

/// See Backend::head_mean_column_sums.
void head_mean_column_sums(const HeadMeanView& view, float* out);

/// See Backend::find_non_finite.
std::size_t find_non_finite(const void* data, DType dtype, std::size_t count);

/// See Backend::encode_records.
void encode_records(const RecordEncode& encode);

/// See Backend::score_records.
void score_records(const RecordQuery& query, float* scores);

/// See Backend::attend_records.
void attend_records(const RecordQuery& query, const RecordRing& values, float* out);

/// See Backend::decode_records.
void decode_records(const RecordRing& ring, std::size_t tokens, float* out);

/// See Backend::copy_tokens.
void copy_tokens(const TokenCopy& copy);

}  // namespace micache::cpu
