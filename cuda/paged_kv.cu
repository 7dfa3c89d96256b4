#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/paged_kv_plan.hpp"

namespace micache::cuda {
namespace {

// Memory access: threadIdx.x walks the words (the widest of 16/8/4/2/1 bytes
// dividing a row, the input token stride and every base address) of one
// row, threadIdx.y the tokens of a tile, blockIdx.y the (kind, head) pairs,
// so a warp reads consecutive words of a token's row of the packed input and
// writes them to consecutive words of the row of its slot: whole rows
// coalesced on both sides (a 128-element BF16 row is two 128-byte lines).
// Each thread reads its token's slot once per pair (the row's threads share
// the load); every key and value byte is read and written once, keys and
// values in this one launch; negative slots skip the token. No division
// (page_size a power of two) in paged_write_thread. Bytes: 4 * tokens *
// kv_heads * head_dim * dtype size + 8 * tokens. 32 registers, no spills
// (sm_90); not yet timed on a GPU.
template <class Unit>
__global__ void __launch_bounds__(kPagedBlockThreads)
    paged_write_kernel(const __grid_constant__ PagedWrite write, const __grid_constant__ PagedLaunch launch) {
  paged_write_thread(write, launch, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y,
                     [&](std::size_t kind, std::size_t dst, std::size_t src) {
                       static_cast<Unit*>(write.pages.data)[dst] =
                           static_cast<const Unit*>(kind == 0 ? write.keys : write.values)[src];
                     });
}

// Memory access: as paged_write_kernel's, the other way: a warp reads
// consecutive words of a token's row in its page (page_ids[token /
// page_size], shared by a page's tokens through the cache) and writes them to
// the dense [kv_heads, tokens, head_dim] output, where consecutive tokens of
// one head are adjacent: the writes of a warp are one contiguous run. Every
// byte is read and written once, keys and values in this one launch.
// Bytes: 4 * tokens * kv_heads * head_dim * dtype size + 4 per page.
// 28-32 registers, no spills (sm_90); not yet timed on a GPU.
template <class Unit>
__global__ void __launch_bounds__(kPagedBlockThreads)
    paged_gather_kernel(const __grid_constant__ PagedGather gather, const __grid_constant__ PagedLaunch launch) {
  paged_gather_thread(gather, launch, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y,
                      [&](std::size_t kind, std::size_t dst, std::size_t src) {
                        static_cast<Unit*>(kind == 0 ? gather.keys : gather.values)[dst] =
                            static_cast<const Unit*>(gather.pages.data)[src];
                      });
}

// Memory access: as paged_write_kernel's, within the pages: a warp reads
// consecutive words of the row of a token's source slot and writes them to
// the row of its destination slot (each thread reads both slots once per
// pair). Every moved byte is read and written once, keys and values in this
// one launch. Bytes: 4 * tokens * kv_heads * head_dim * dtype size + 16 *
// tokens. Not yet timed on a GPU.
template <class Unit>
__global__ void __launch_bounds__(kPagedBlockThreads)
    paged_move_kernel(const __grid_constant__ PagedMove move, const __grid_constant__ PagedLaunch launch) {
  paged_move_thread(move, launch, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y,
                    [&](std::size_t, std::size_t dst, std::size_t src) {
                      static_cast<Unit*>(move.pages.data)[dst] = static_cast<const Unit*>(move.pages.data)[src];
                    });
}

// Launches `kernel` over the row-copy grid of `op` (plan_paged over its
// pages and tokens, `token_stride` for packed inputs, 0 otherwise).
template <class Unit, class Op>
cudaError_t launch_rows(void (*kernel)(Op, PagedLaunch), const Op& op, std::size_t token_stride,
                        cudaStream_t stream) {
  const PagedLaunch plan = plan_paged(op.pages, op.tokens, token_stride, sizeof(Unit));
  kernel<<<dim3(plan.token_blocks, plan.pair_blocks), dim3(plan.unit_threads, plan.token_threads), 0, stream>>>(op,
                                                                                                            plan);
  return cudaGetLastError();
}

template <class Unit>
struct LaunchWrite {
  static cudaError_t run(const PagedWrite& write, cudaStream_t stream) {
    return launch_rows<Unit>(paged_write_kernel<Unit>, write, write.token_stride, stream);
  }
};

template <class Unit>
struct LaunchGather {
  static cudaError_t run(const PagedGather& gather, cudaStream_t stream) {
    return launch_rows<Unit>(paged_gather_kernel<Unit>, gather, 0, stream);
  }
};

template <class Unit>
struct LaunchMove {
  static cudaError_t run(const PagedMove& move, cudaStream_t stream) {
    return launch_rows<Unit>(paged_move_kernel<Unit>, move, 0, stream);
  }
};

}  // namespace

cudaError_t launch_paged_write(const PagedWrite& write, cudaStream_t stream) {
  if (write.tokens * write.pages.kv_heads * write.pages.head_dim == 0) return cudaSuccess;
  return dispatch_word<LaunchWrite>(paged_write_unit(write), write, stream);
}

cudaError_t launch_paged_gather(const PagedGather& gather, cudaStream_t stream) {
  if (gather.tokens * gather.pages.kv_heads * gather.pages.head_dim == 0) return cudaSuccess;
  return dispatch_word<LaunchGather>(paged_gather_unit(gather), gather, stream);
}

cudaError_t launch_paged_move(const PagedMove& move, cudaStream_t stream) {
  if (move.tokens * move.pages.kv_heads * move.pages.head_dim == 0) return cudaSuccess;
  return dispatch_word<LaunchMove>(paged_move_unit(move), move, stream);
}

}  // namespace micache::cuda
