#include "micache/kv_cache_config.hpp"

#include <fmt/format.h>

#include "micache/error.hpp"

namespace micache {
namespace {

void validate_bit_width(unsigned bits) {
  if (bits < 1 || bits > 16) {
    throw Error(ErrorCode::InvalidBitWidth, fmt::format("bit width must be 1..=16, got {}", bits));
  }
  if (bits > 8) {
    throw Error(ErrorCode::InvalidBitWidth,
                fmt::format("bit width {} is valid in bitpolar but micache packs at most 8 bits per coordinate", bits));
  }
}

}  // namespace

void KvCacheConfig::validate() const {
  if (head_dim == 0) {
    throw Error(ErrorCode::ZeroDimension, "dimension must be > 0");
  }
  if (head_dim % 2 != 0) {
    throw Error(ErrorCode::OddDimension, fmt::format("dimension must be even, got {}", head_dim));
  }
  if (head_dim / 2 > 65535) {
    throw Error(ErrorCode::DimensionTooLarge,
                fmt::format("dimension {} too large for compact format (max 131070)", head_dim));
  }
  validate_bit_width(bits);
  if (value_bits != 0) {
    validate_bit_width(value_bits);
  }
  if (projections == 0) {
    throw Error(ErrorCode::ZeroProjections, "projections must be > 0");
  }
  if (projections > 65535) {
    throw Error(ErrorCode::DimensionTooLarge,
                fmt::format("dimension {} too large for compact format (max 65535)", projections));
  }
}

}  // namespace micache
