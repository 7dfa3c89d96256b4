#include <cstdint>

#include <algorithm>

#include "cuda/kernels.hpp"

namespace micache::cuda {
namespace {

constexpr int kBlock = 256;

// Memory access: thread per (buffer, plane, token, unit) where a unit is the
// widest of 16/8/4/2/1 bytes dividing token_bytes and every base address; a
// warp reads and writes consecutive units of consecutive tokens, so runs that
// do not wrap copy fully coalesced (a gather reads each source token's units
// contiguously). Every byte is read and written once; keys and values of a
// layer move in this one launch.
template <class Unit>
__global__ void __launch_bounds__(kBlock) copy_tokens_kernel(const __grid_constant__ TokenCopy copy) {
  const std::size_t units = copy.token_bytes / sizeof(Unit);
  const std::size_t per_buffer = copy.planes * copy.tokens * units;
  const std::size_t total = copy.buffers * per_buffer;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kBlock;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x; i < total; i += stride) {
    const std::size_t buffer = i / per_buffer;
    const std::size_t within = i % per_buffer;
    const std::size_t unit = within % units;
    const std::size_t token = (within / units) % copy.tokens;
    const std::size_t plane = within / (units * copy.tokens);
    const std::size_t logical =
        copy.src_tokens != nullptr ? static_cast<std::size_t>(copy.src_tokens[token]) : token;
    const std::size_t s = plane * copy.src_capacity + (copy.src_start + logical) % copy.src_capacity;
    const std::size_t d = plane * copy.dst_capacity + (copy.dst_start + token) % copy.dst_capacity;
    static_cast<Unit*>(copy.dst[buffer])[d * units + unit] = static_cast<const Unit*>(copy.src[buffer])[s * units + unit];
  }
}

template <class Unit>
cudaError_t launch(const TokenCopy& copy, cudaStream_t stream) {
  const std::size_t total = copy.buffers * copy.planes * copy.tokens * (copy.token_bytes / sizeof(Unit));
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((total + kBlock - 1) / kBlock, 1u << 20));
  copy_tokens_kernel<Unit><<<blocks, kBlock, 0, stream>>>(copy);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_copy_tokens(const TokenCopy& copy, cudaStream_t stream) {
  if (copy.buffers * copy.planes * copy.tokens * copy.token_bytes == 0) {
    return cudaSuccess;
  }
  const auto fits = [&](std::size_t unit) {
    bool aligned = copy.token_bytes % unit == 0;
    for (std::size_t b = 0; b < copy.buffers; ++b) {
      aligned = aligned && reinterpret_cast<std::uintptr_t>(copy.src[b]) % unit == 0 &&
                reinterpret_cast<std::uintptr_t>(copy.dst[b]) % unit == 0;
    }
    return aligned;
  };
  if (fits(16)) return launch<uint4>(copy, stream);
  if (fits(8)) return launch<uint2>(copy, stream);
  if (fits(4)) return launch<unsigned>(copy, stream);
  if (fits(2)) return launch<unsigned short>(copy, stream);
  return launch<unsigned char>(copy, stream);
}

}  // namespace micache::cuda
