// Plumbing of the backend conformance suite (backend_conformance_test.cpp):
// byte buffers on any backend, seeded fills, whole-buffer comparisons and the
// (device x case) parameter names.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace micache::testing::conformance {

/// Host bytes: every input and output of a conformance case travels as these.
using Bytes = std::vector<std::uint8_t>;

/// Bytes appended after every buffer the suite hands a kernel. Outputs start
/// from the same random bytes on the backend and in the reference, and are
/// compared whole, guard included: a missing write leaves a random byte where
/// the reference wrote a value, a stray write past the end changes the guard.
inline constexpr std::size_t kGuardBytes = 64;

/// A seed from a case name (FNV-1a), so every case draws its own data and the
/// same data on every platform.
inline std::uint32_t seed_of(const std::string& name) {
  std::uint32_t hash = 2166136261u;
  for (const char ch : name) {
    hash = (hash ^ static_cast<std::uint8_t>(ch)) * 16777619u;
  }
  return hash;
}

/// `n` random bytes from `seed`, then kGuardBytes more.
inline Bytes random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes out(n + kGuardBytes);
  for (std::uint8_t& b : out) b = static_cast<std::uint8_t>(rng() >> 24);
  return out;
}

/// `n` bytes 0xff (f32 NaNs), then kGuardBytes random bytes from `seed`: the
/// start of an output compared to a tolerance, where random bytes could read
/// as a float close enough to the answer to hide a missing write.
inline Bytes nan_bytes(std::size_t n, std::uint32_t seed) {
  Bytes out = random_bytes(n, seed);
  std::fill(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n), std::uint8_t{0xff});
  return out;
}

/// The bytes of `values`, then kGuardBytes of zeros.
template <class T>
Bytes bytes_of(const std::vector<T>& values) {
  Bytes out(values.size() * sizeof(T) + kGuardBytes);
  if (!values.empty()) std::memcpy(out.data(), values.data(), values.size() * sizeof(T));
  return out;
}

/// `count` elements of type T read from `bytes` at byte `offset`.
template <class T>
std::vector<T> values_of(const Bytes& bytes, std::size_t count, std::size_t offset = 0) {
  std::vector<T> out(count);
  if (count > 0) std::memcpy(out.data(), bytes.data() + offset, count * sizeof(T));
  return out;
}

/// `values` rounded to `dtype` and stored as its elements, then kGuardBytes of zeros.
inline Bytes elements_of(const std::vector<float>& values, DType dtype) {
  Bytes out(values.size() * dtype_size(dtype) + kGuardBytes);
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else {
      const std::uint16_t half = dtype == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
      std::memcpy(out.data() + 2 * i, &half, 2);
    }
  }
  return out;
}

/// Memory of one backend holding a copy of host bytes; freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer(Backend& backend, const Bytes& contents)
      : backend_(&backend), size_(contents.size()), data_(backend.allocate(size_)) {
    backend.copy_host_to_device(data_, contents.data(), size_, Stream{});
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { backend_->deallocate(data_, size_); }

  /// The device address of byte `offset`.
  std::uint8_t* at(std::size_t offset = 0) const { return static_cast<std::uint8_t*>(data_) + offset; }
  /// The device address of byte `offset`, typed (the suite's buffers are 256-byte aligned).
  template <class T>
  T* as(std::size_t offset = 0) const {
    return reinterpret_cast<T*>(at(offset));
  }
  /// Every byte, copied back to the host (after the work queued before it).
  Bytes read() const {
    Bytes out(size_);
    backend_->copy_device_to_host(out.data(), data_, size_, Stream{});
    return out;
  }

 private:
  Backend* backend_;
  std::size_t size_;
  void* data_;
};

/// Expects two buffers equal byte for byte; reports the first mismatching
/// elements of `element_bytes` (as hex, and as floats when 4 bytes wide).
inline void expect_same_bytes(const Bytes& actual, const Bytes& expected, std::size_t element_bytes,
                              const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  std::size_t mismatches = 0;
  for (std::size_t e = 0; e * element_bytes < actual.size(); ++e) {
    const std::size_t first = e * element_bytes;
    const std::size_t width = std::min(element_bytes, actual.size() - first);
    if (std::memcmp(actual.data() + first, expected.data() + first, width) == 0) continue;
    if (++mismatches <= 5) {
      std::string got, want;
      char hex[4];
      for (std::size_t b = width; b-- > 0;) {
        std::snprintf(hex, sizeof hex, "%02x", actual[first + b]);
        got += hex;
        std::snprintf(hex, sizeof hex, "%02x", expected[first + b]);
        want += hex;
      }
      std::string as_floats;
      if (width == 4) {
        as_floats = " (" + std::to_string(values_of<float>(actual, 1, first)[0]) + " vs " +
                    std::to_string(values_of<float>(expected, 1, first)[0]) + ")";
      }
      ADD_FAILURE() << what << ": element " << e << " (byte " << first << ") is 0x" << got << ", expected 0x" << want
                    << as_floats;
    }
  }
  EXPECT_EQ(mismatches, 0u) << what << ": elements of " << element_bytes << " bytes that differ";
}

/// Expects the first `n` floats of two buffers to have the same bits, or both
/// to be NaN (IEEE 754 leaves NaN payloads to the hardware: x86 keeps an
/// operand's, CUDA makes a canonical one), and every later byte (the guard) equal.
inline void expect_same_floats(const Bytes& actual, const Bytes& expected, std::size_t n, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  const std::vector<float> got = values_of<float>(actual, n);
  const std::vector<float> want = values_of<float>(expected, n);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if ((std::isnan(got[i]) && std::isnan(want[i])) || float_bits(got[i]) == float_bits(want[i])) continue;
    if (++mismatches <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " (0x" << std::hex << float_bits(got[i])
                    << "), expected " << want[i] << " (0x" << float_bits(want[i]) << std::dec << ")";
    }
  }
  EXPECT_EQ(mismatches, 0u) << what << ": elements that differ";
  const Bytes got_tail(actual.begin() + static_cast<std::ptrdiff_t>(4 * n), actual.end());
  const Bytes want_tail(expected.begin() + static_cast<std::ptrdiff_t>(4 * n), expected.end());
  expect_same_bytes(got_tail, want_tail, 1, what + " past the last element");
}

/// Expects the first tolerance.size() floats of two buffers within their
/// tolerance (both NaN counts as equal) and every later byte (the guard) equal.
inline void expect_floats_near(const Bytes& actual, const Bytes& expected, const std::vector<double>& tolerance,
                               const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  const std::size_t n = tolerance.size();
  const std::vector<float> got = values_of<float>(actual, n);
  const std::vector<float> want = values_of<float>(expected, n);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool both_nan = std::isnan(got[i]) && std::isnan(want[i]);
    const double error = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (both_nan || error <= tolerance[i]) continue;
    if (++mismatches <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", expected " << want[i] << " within "
                    << tolerance[i] << " (off by " << error << ")";
    }
  }
  EXPECT_EQ(mismatches, 0u) << what << ": elements out of tolerance";
  const Bytes got_tail(actual.begin() + static_cast<std::ptrdiff_t>(4 * n), actual.end());
  const Bytes want_tail(expected.begin() + static_cast<std::ptrdiff_t>(4 * n), expected.end());
  expect_same_bytes(got_tail, want_tail, 1, what + " past the last element");
}

/// A conformance parameter: the device under test and one case of an operation's table.
template <class Case>
struct DeviceCase {
  Device device;
  Case c;

  friend void PrintTo(const DeviceCase& param, std::ostream* os) {
    *os << param.device.to_string() << " " << param.c.name;
  }
};

/// Every case of `cases` on every device of test_devices(), device by device.
template <class Case>
std::vector<DeviceCase<Case>> on_every_device(const std::vector<Case>& cases) {
  std::vector<DeviceCase<Case>> out;
  for (const Device device : test_devices()) {
    for (const Case& c : cases) out.push_back({device, c});
  }
  return out;
}

/// "<case>_cpu", "<case>_cuda0": the case's name, then the device's.
template <class Case>
std::string device_case_name(const ::testing::TestParamInfo<DeviceCase<Case>>& info) {
  const ::testing::TestParamInfo<Device> device(info.param.device, info.index);
  return info.param.c.name + "_" + device_param_name(device);
}

/// Fixture of one operation's conformance test: the device and case of the parameter.
template <class Case>
class ConformanceTest : public ::testing::TestWithParam<DeviceCase<Case>> {
 protected:
  Device device() const { return this->GetParam().device; }
  Backend& backend() const { return backend_for(device()); }
  const Case& param() const { return this->GetParam().c; }
  /// True when the device under test is the CPU, compared with the reference
  /// loops; any other backend is compared with CpuBackend.
  bool on_reference_device() const { return device().is_cpu(); }
};

}  // namespace micache::testing::conformance
