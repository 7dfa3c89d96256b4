// cudaEvent timing on the default stream for bench_report.hpp's time_iteration (CUDA builds only).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "bench/bench_report.hpp"

namespace micache::bench {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

cudaEvent_t make_event() {
  cudaEvent_t event = nullptr;
  check(cudaEventCreate(&event), "cudaEventCreate");
  return event;
}

}  // namespace

double default_stream_seconds(const std::function<void()>& body) {
  // Made once and kept for the process: the benchmarks run one at a time.
  static const cudaEvent_t start = make_event();
  static const cudaEvent_t stop = make_event();
  check(cudaEventRecord(start, nullptr), "cudaEventRecord");
  body();
  check(cudaEventRecord(stop, nullptr), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  return static_cast<double>(ms) * 1e-3;
}

}  // namespace micache::bench
