// Private: the argument checks every cache shares, one wording for each kind of bad argument.
//
// Each throws micache::Error before anything changes; messages name the
// argument, the value and the bound (DESIGN.md), always in the words below,
// so a user who has met one of them knows them all.
#pragma once

#include <cstddef>
#include <string_view>

#include "micache/device.hpp"
#include "micache/dtype.hpp"
#include "micache/error.hpp"
#include "micache/tensor.hpp"

namespace micache::detail {

/// Config `"{what}: undefined tensor"` when `tensor` holds nothing.
void require_defined(const Tensor& tensor, std::string_view what);

/// `"{what} must be f32, f16 or bf16, got {dtype}"` when `dtype` is not a
/// float dtype. Code Config, or `code` (Io for a file's tensor).
void require_float_dtype(DType dtype, std::string_view what, ErrorCode code = ErrorCode::Config);

/// Config `"{what} on {actual}, the cache on {expected}"` when the devices differ.
void require_device(Device actual, Device expected, std::string_view what);

/// Shape `"{what} must be {layout}, got rank {rank} {shape}"` when `tensor`
/// does not have `rank` dimensions; `layout` names them, e.g. `[seq_len, d_model]`.
void require_rank(const Tensor& tensor, std::size_t rank, std::string_view what, std::string_view layout);

/// Hook `"{what} {index} out of range ({bound}={count})"` when index >= count,
/// e.g. `head 5 out of range (heads=2)`.
void require_index(std::size_t index, std::size_t count, std::string_view what, std::string_view bound);

}  // namespace micache::detail
