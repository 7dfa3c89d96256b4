// Shared by the fuzz targets: failure reports, the outcome of a call that may throw, and exact float comparison.
#pragma once

#include <fmt/format.h>
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <typeinfo>
#include <utility>

#include "micache/dtype.hpp"
#include "micache/error.hpp"

// Huge requests (a reserve of 2^40 tokens and more) must come back from the allocator as null, so that micache can
// report OutOfMemory, instead of ending the run inside AddressSanitizer. Read by the ASan runtime at start-up; every
// target is one translation unit that includes this header once.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }

namespace micache::fuzz {

/// Reports a broken property and aborts: libFuzzer records the input as a crash.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  std::fprintf(stderr, "micache fuzz: %s\n", fmt::format(format, std::forward<Args>(args)...).c_str());
  std::fflush(stderr);
  std::abort();
}

/// Fails with the formatted message unless `ok`.
template <class... Args>
void check(bool ok, fmt::format_string<Args...> format, Args&&... args) {
  if (!ok) fail(format, std::forward<Args>(args)...);
}

/// A set of error codes, one bit per ErrorCode.
class Codes {
 public:
  constexpr Codes() = default;
  constexpr Codes(std::initializer_list<ErrorCode> codes) {
    for (const ErrorCode code : codes) add(code);
  }
  constexpr void add(ErrorCode code) { bits_ |= 1u << static_cast<unsigned>(code); }
  constexpr bool contains(ErrorCode code) const { return (bits_ >> static_cast<unsigned>(code) & 1u) != 0; }
  constexpr bool empty() const { return bits_ == 0; }
  std::string to_string() const {
    std::string out;
    for (unsigned c = 0; c <= static_cast<unsigned>(ErrorCode::Io); ++c) {
      const auto code = static_cast<ErrorCode>(c);
      if (contains(code)) out += fmt::format("{}{}", out.empty() ? "" : "|", micache::to_string(code));
    }
    return out.empty() ? "none" : out;
  }

 private:
  std::uint32_t bits_ = 0;
};

/// Runs `call`: nullopt when it returns, the Error when it throws one. Any
/// other exception is a finding.
template <class Call>
std::optional<Error> attempt(const char* what, Call&& call) {
  try {
    std::forward<Call>(call)();
    return std::nullopt;
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    fail("{}: threw {} ({}), not micache::Error", what, typeid(e).name(), e.what());
  } catch (...) {
    fail("{}: threw something that is not a std::exception", what);
  }
}

/// Checks an outcome of `attempt` that may be either: success, or an Error with one of the `allowed` codes.
inline void allow(const std::optional<Error>& got, Codes allowed, const char* what) {
  if (got) {
    check(allowed.contains(got->code()), "{}: Error {} ({}), allowed {}", what, micache::to_string(got->code()),
          got->what(), allowed.to_string());
  }
}

/// Checks an outcome of `attempt`: success when `expected` is empty, else an Error with one of its codes.
inline void expect(const std::optional<Error>& got, Codes expected, const char* what) {
  check(got.has_value() || expected.empty(), "{}: returned, expected an Error ({})", what, expected.to_string());
  allow(got, expected, what);
}

/// A token count no allocation can hold: 2^40 to 2^63 plus 0..3, or SIZE_MAX minus 0..3. Byte counts computed
/// from it overflow std::size_t for most geometries (to 0 for many).
inline std::size_t pick_huge(FuzzedDataProvider& in) {
  const int shift = in.ConsumeIntegralInRange(40, 64);
  const std::size_t offset = in.ConsumeIntegralInRange<std::size_t>(0, 3);
  return shift == 64 ? std::numeric_limits<std::size_t>::max() - offset : (std::size_t{1} << shift) + offset;
}

/// True when `a` and `b` have the same bits, or are both NaN.
// The value `x` holds once stored as `dtype`.
inline float stored_as(float x, DType dtype) {
  switch (dtype) {
    case DType::F16:
      return f16_to_f32(f32_to_f16(x));
    case DType::BF16:
      return bf16_to_f32(f32_to_bf16(x));
    default:
      return x;
  }
}

inline bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || float_bits(a) == float_bits(b); }

}  // namespace micache::fuzz
