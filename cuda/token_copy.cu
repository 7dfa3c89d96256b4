#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/token_copy_plan.hpp"
#include "cuda/word_unit.hpp"

namespace micache::cuda {
namespace {

// Memory access: threadIdx.x walks the units (the widest of 16/8/4/2/1 bytes
// dividing token_bytes and every base address) of one token, threadIdx.y the
// tokens of a tile, so a warp reads and writes consecutive units of
// consecutive slots: fully coalesced wherever the rings do not wrap (a gather
// reads each source token's units contiguously). Every byte is read and
// written once; keys and values of a layer move in this one launch. Index
// arithmetic (copy_tokens_thread) has no division per unit or token.
// Bytes: 2 * buffers * planes * tokens * token_bytes. 31-32 registers, no
// spills; with 16-byte units under 1 instruction per byte: >= 85 % of the
// copy roof; 2-byte units (misaligned rows only) 60-80 %.
template <class Unit>
__global__ void __launch_bounds__(kCopyBlockThreads)
    copy_tokens_kernel(const __grid_constant__ TokenCopy copy, const __grid_constant__ CopyTokensLaunch launch) {
  const std::size_t units = copy.token_bytes / sizeof(Unit);
  copy_tokens_thread(copy, units, launch, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y,
                     [&](std::size_t buffer, std::size_t dst, std::size_t src) {
                       static_cast<Unit*>(copy.dst[buffer])[dst] = static_cast<const Unit*>(copy.src[buffer])[src];
                     });
}

template <class Unit>
struct LaunchCopy {
  static cudaError_t run(TokenCopy copy, cudaStream_t stream) {
    copy.src_start %= copy.src_capacity;
    copy.dst_start %= copy.dst_capacity;
    const CopyTokensLaunch plan = plan_copy_tokens(copy, copy.token_bytes / sizeof(Unit));
    copy_tokens_kernel<Unit>
        <<<dim3(plan.token_blocks, plan.pair_blocks), dim3(plan.unit_threads, plan.token_threads), 0, stream>>>(copy,
                                                                                                                plan);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_copy_tokens(const TokenCopy& copy, cudaStream_t stream) {
  if (copy.buffers * copy.planes * copy.tokens * copy.token_bytes == 0) {
    return cudaSuccess;
  }
  std::uintptr_t bits = copy.token_bytes;
  for (std::size_t b = 0; b < copy.buffers; ++b) {
    bits |= reinterpret_cast<std::uintptr_t>(copy.src[b]) | reinterpret_cast<std::uintptr_t>(copy.dst[b]);
  }
  return dispatch_word<LaunchCopy>(widest_unit_of_bits(bits), copy, stream);
}

}  // namespace micache::cuda
