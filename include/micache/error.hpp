// The one exception type micache throws, with a code saying which rule was broken.
#pragma once

#include <stdexcept>
#include <string>

namespace micache {

/// What kind of failure an Error reports.
enum class ErrorCode {
  Hook,               ///< layer, position, batch or head out of range; empty cache (candle-mi's MIError::Hook)
  Shape,              ///< rank or dimensions wrong, or inconsistent across layers
  DimensionMismatch,  ///< a vector or list of the wrong length (bitpolar)
  NonFiniteInput,     ///< NaN or infinity where a finite value is required (bitpolar)
  EmptyInput,         ///< a count that must be positive is zero (bitpolar)
  ZeroDimension,      ///< a vector dimension (head_dim) is zero (bitpolar)
  OddDimension,       ///< a vector dimension (head_dim) is odd (bitpolar)
  InvalidBitWidth,    ///< bits per coordinate outside what is supported (bitpolar: 1..=16; micache: 1..=8)
  ZeroProjections,    ///< the QJL projection count is zero (bitpolar)
  DimensionTooLarge,  ///< a dimension or projection count above bitpolar's compact-format limit (bitpolar)
  Config,             ///< an invalid setting or argument value, an unsupported dtype
  OutOfMemory,        ///< an allocation failed; the object is unchanged
  Backend,            ///< a backend failed or is not built; CUDA's error text is included
  Io,                 ///< reading or writing a file failed
};

/// Name of a code, e.g. "Hook".
const char* to_string(ErrorCode code) noexcept;

/// Exception thrown by every micache operation that fails.
///
/// `what()` is the message alone, naming the argument, its value and the bound
/// (`position 10 out of range (seq_q=4)`); `code()` says which kind of failure.
/// Operations that throw leave the object they were called on unchanged.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace micache
