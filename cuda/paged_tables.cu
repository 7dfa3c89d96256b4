#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/paged_tables_plan.hpp"

namespace micache::cuda {
namespace {

// The sums of each of `values` over the `Threads` threads of the block (a
// multiple of 32, the whole block); every thread gets them. Integers: exact
// in any order. Two barriers, so a caller may call it again at once.
template <unsigned Threads, std::size_t N>
__device__ void block_sums(std::int64_t (&values)[N]) {
  __shared__ std::int64_t partial[N][Threads / kPagedWarpLanes];
  const unsigned warp = threadIdx.x / kPagedWarpLanes;
#pragma unroll
  for (std::size_t n = 0; n < N; ++n) {
#pragma unroll
    for (unsigned width = kPagedWarpLanes / 2; width > 0; width >>= 1) {
      values[n] += __shfl_xor_sync(kFullMask, values[n], width);
    }
    if (threadIdx.x % kPagedWarpLanes == 0) partial[n][warp] = values[n];
  }
  __syncthreads();
#pragma unroll
  for (std::size_t n = 0; n < N; ++n) {
    values[n] = 0;
    for (unsigned w = 0; w < Threads / kPagedWarpLanes; ++w) values[n] += partial[n][w];
  }
  __syncthreads();
}

// Memory access: block x takes entries x, x + gridDim.x, ...; for each, its
// threads read the lengths and new-token counts of the entries before it
// (coalesced; 8 bytes per earlier entry, O(batch^2) in all, from L2 after
// the first blocks), write the entry's updates into its row (coalesced over
// the update list, scattered over the row's columns) and its length, then,
// after a barrier that makes the updates visible to the block, read the
// row's first pages (contiguous) into kv_indices (contiguous) and each new
// token's page into slot_mapping (contiguous). Rows are distinct, so no two
// blocks touch the same row. Bytes: see PagedStepBuild. Not yet timed on a GPU.
__global__ void __launch_bounds__(kPagedStepThreads)
    paged_step_kernel(const __grid_constant__ PagedStepBuild build, const __grid_constant__ PagedStepLaunch launch) {
  for (std::size_t b = blockIdx.x; b < build.batch; b += gridDim.x) {
    const PagedStepOffsets part = paged_step_offsets_thread(build, launch.split, b, threadIdx.x, kPagedStepThreads);
    std::int64_t sums[2] = {part.pages, part.tokens};
    block_sums<kPagedStepThreads>(sums);
    paged_step_update_thread(build, b, threadIdx.x, kPagedStepThreads);
    __syncthreads();
    paged_step_write_thread(build, launch.split, b, PagedStepOffsets{sums[0], sums[1]}, threadIdx.x, kPagedStepThreads);
  }
}

// Memory access: one block. Its threads write the asked rows' per_sequence
// rows (32 bytes each, contiguous) and zero the scratch (coalesced); after a
// barrier each warp takes live rows in turn and its lanes read the row's
// page ids (contiguous) and count each with an atomic add (references) and
// an atomic max (fill) on the scratch; after a barrier the threads read the
// scratch (coalesced) into three block sums, and thread 0 writes the pool.
// Bytes: see PagedAccounting. Not yet timed on a GPU.
__global__ void __launch_bounds__(kPagedAccountingThreads)
    paged_accounting_kernel(const __grid_constant__ PagedAccounting accounting) {
  constexpr unsigned threads = kPagedAccountingThreads;
  paged_accounting_sequence_thread(accounting, threadIdx.x, threads);
  paged_accounting_zero_thread(accounting, threadIdx.x, threads);
  __syncthreads();
  paged_accounting_count_thread(accounting, threadIdx.x / kPagedWarpLanes, threads / kPagedWarpLanes,
                                threadIdx.x % kPagedWarpLanes, [&](std::size_t page, std::uint32_t fill) {
                                  atomicAdd(accounting.page_refs + page, 1u);
                                  atomicMax(accounting.page_fill + page, fill);
                                });
  __syncthreads();
  const PagedPoolSums part = paged_accounting_pool_thread(accounting, threadIdx.x, threads);
  std::int64_t sums[3] = {part.referenced, part.shared, part.tokens};
  block_sums<threads>(sums);
  if (threadIdx.x == 0) paged_accounting_store_pool(accounting, PagedPoolSums{sums[0], sums[1], sums[2]});
}

}  // namespace

cudaError_t launch_paged_build_step(const PagedStepBuild& build, cudaStream_t stream) {
  if (build.batch == 0) return cudaSuccess;
  const PagedStepLaunch launch = plan_paged_step(build);
  paged_step_kernel<<<launch.blocks, kPagedStepThreads, 0, stream>>>(build, launch);
  return cudaGetLastError();
}

cudaError_t launch_paged_accounting(const PagedAccounting& accounting, cudaStream_t stream) {
  paged_accounting_kernel<<<1, kPagedAccountingThreads, 0, stream>>>(accounting);
  return cudaGetLastError();
}

}  // namespace micache::cuda
