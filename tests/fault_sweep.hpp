// The out-of-memory sweep every mutator's strong-guarantee test runs.
#pragma once

#include <functional>
#include <vector>

#include "test_support.hpp"

namespace micache::testing {

// Runs `operation` on fresh copies of a cache made by `make` with allocation
// n = 1, 2, ... failing, until it succeeds; `state` renders a cache for
// comparison (called with injection disarmed). Returns the failures seen.
template <class Cache>
inline std::size_t sweep(Device device, const std::function<Cache()>& make,
                         const std::function<void(Cache&)>& operation,
                         const std::function<std::vector<float>(const Cache&)>& state) {
  Backend& backend = backend_for(device);
  for (std::size_t n = 1; n < 200; ++n) {
    Cache cache = make();
    const std::vector<float> before = state(cache);
    const std::size_t in_use = backend.memory_stats().in_use;
    backend.fail_allocation_after(n);
    try {
      operation(cache);
      backend.fail_allocation_after(0);
      return n - 1;
    } catch (const Error& e) {
      backend.fail_allocation_after(0);
      EXPECT_EQ(e.code(), ErrorCode::OutOfMemory) << "allocation " << n << ": " << e.what();
      EXPECT_EQ(backend.memory_stats().in_use, in_use) << "leak after failing allocation " << n;
      expect_same_bits(state(cache), before);
    }
  }
  ADD_FAILURE() << "the operation still failed after 199 injected failures";
  return 0;
}

}  // namespace micache::testing
