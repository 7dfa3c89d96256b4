#include "micache/error.hpp"

namespace micache {

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::Hook: return "Hook";
    case ErrorCode::Shape: return "Shape";
    case ErrorCode::DimensionMismatch: return "DimensionMismatch";
    case ErrorCode::NonFiniteInput: return "NonFiniteInput";
    case ErrorCode::EmptyInput: return "EmptyInput";
    case ErrorCode::ZeroDimension: return "ZeroDimension";
    case ErrorCode::OddDimension: return "OddDimension";
    case ErrorCode::InvalidBitWidth: return "InvalidBitWidth";
    case ErrorCode::ZeroProjections: return "ZeroProjections";
    case ErrorCode::DimensionTooLarge: return "DimensionTooLarge";
    case ErrorCode::Config: return "Config";
    case ErrorCode::OutOfMemory: return "OutOfMemory";
    case ErrorCode::Backend: return "Backend";
    case ErrorCode::Io: return "Io";
  }
  return "Unknown";
}

}  // namespace micache
