#include <cstdint>

#include <algorithm>

#include "cuda/kernels.hpp"

namespace micache::cuda {
namespace {

constexpr int kBlock = 256;

// Memory access: thread per (plane, token, unit) where a unit is the widest
// of 16/8/4/2/1 bytes dividing token_bytes and both base addresses; a warp
// reads and writes consecutive units of consecutive tokens, so for runs that
// do not wrap the copy is fully coalesced. Every byte is read and written once.
template <class Unit>
__global__ void __launch_bounds__(kBlock) copy_tokens_kernel(const TokenCopy copy) {
  const std::size_t units = copy.token_bytes / sizeof(Unit);
  const std::size_t total = copy.planes * copy.tokens * units;
  const auto* src = static_cast<const Unit*>(copy.src);
  auto* dst = static_cast<Unit*>(copy.dst);
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kBlock;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * kBlock + threadIdx.x; i < total; i += stride) {
    const std::size_t unit = i % units;
    const std::size_t token = (i / units) % copy.tokens;
    const std::size_t plane = i / (units * copy.tokens);
    const std::size_t s = plane * copy.src_capacity + (copy.src_start + token) % copy.src_capacity;
    const std::size_t d = plane * copy.dst_capacity + (copy.dst_start + token) % copy.dst_capacity;
    dst[d * units + unit] = src[s * units + unit];
  }
}

template <class Unit>
cudaError_t launch(const TokenCopy& copy, cudaStream_t stream) {
  const std::size_t total = copy.planes * copy.tokens * (copy.token_bytes / sizeof(Unit));
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((total + kBlock - 1) / kBlock, 1u << 20));
  copy_tokens_kernel<Unit><<<blocks, kBlock, 0, stream>>>(copy);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_copy_tokens(const TokenCopy& copy, cudaStream_t stream) {
  if (copy.planes * copy.tokens * copy.token_bytes == 0) {
    return cudaSuccess;
  }
  const auto fits = [&](std::size_t unit) {
    return copy.token_bytes % unit == 0 && reinterpret_cast<std::uintptr_t>(copy.src) % unit == 0 &&
           reinterpret_cast<std::uintptr_t>(copy.dst) % unit == 0;
  };
  if (fits(16)) return launch<uint4>(copy, stream);
  if (fits(8)) return launch<uint2>(copy, stream);
  if (fits(4)) return launch<unsigned>(copy, stream);
  if (fits(2)) return launch<unsigned short>(copy, stream);
  return launch<unsigned char>(copy, stream);
}

}  // namespace micache::cuda
