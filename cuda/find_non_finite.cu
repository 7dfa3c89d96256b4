// Backend::find_non_finite on the device.
#include <cstddef>

#include "cuda/common.cuh"
#include "cuda/kernels.hpp"
#include "micache/dtype.hpp"

namespace micache::cuda {
namespace {

constexpr unsigned kFindBlock = 256;

// Memory access: grid-stride over the elements, one read each; the first
// non-finite index wins through atomicMin on a 64-bit slot. Bytes: count * size(dtype).
__global__ void __launch_bounds__(kFindBlock)
    find_non_finite_kernel(const void* data, DType dtype, std::size_t count, unsigned long long* first) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * kFindBlock;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * kFindBlock + threadIdx.x; i < count; i += stride) {
    if (!isfinite(load_as_f32(data, dtype, i))) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

}  // namespace

cudaError_t launch_find_non_finite(const void* data, DType dtype, std::size_t count, unsigned long long* first,
                                   cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  find_non_finite_kernel<<<grid_blocks(count, kFindBlock), kFindBlock, 0, stream>>>(data, dtype, count, first);
  return cudaGetLastError();
}

}  // namespace micache::cuda
