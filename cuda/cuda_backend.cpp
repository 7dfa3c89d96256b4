// CudaBackend: device memory from the stream-ordered pool (or plain cudaMalloc
// for sanitizer runs), stream-ordered copies, and the kernels of cuda/*.cu.
#include "cuda/cuda_backend.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "cuda/kernels.hpp"
#include "micache/error.hpp"

namespace micache::cuda {
namespace {

cudaStream_t native(Stream stream) { return static_cast<cudaStream_t>(stream.handle); }

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    throw Error(ErrorCode::Backend,
                fmt::format("{}: {} ({})", what, cudaGetErrorName(status), cudaGetErrorString(status)));
  }
}

// Makes `device` current for the scope, restoring the previous one after.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
      check(cudaSetDevice(device), "cudaSetDevice");
    }
    active_ = device;
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  ~DeviceScope() {
    if (previous_ != active_) {
      cudaSetDevice(previous_);
    }
  }

 private:
  int previous_ = 0;
  int active_ = 0;
};

/// The CUDA implementation of Backend for one device.
///
/// Memory comes from the device's default stream-ordered pool
/// (cudaMallocAsync) unless the environment sets MICACHE_CUDA_ALLOCATOR=plain,
/// which uses cudaMalloc/cudaFree so that compute-sanitizer sees every
/// allocation's true bounds (pools hide out-of-bounds accesses).
class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index) : index_(index) {
    const DeviceScope scope(index_);
    int pools = 0;
    check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, index_), "cudaDeviceGetAttribute");
    const char* mode = std::getenv("MICACHE_CUDA_ALLOCATOR");
    use_pool_ = pools != 0 && !(mode != nullptr && std::strcmp(mode, "plain") == 0);
    if (use_pool_) {
      check(cudaDeviceGetDefaultMemPool(&pool_, index_), "cudaDeviceGetDefaultMemPool");
    }
  }

  Device device() const noexcept override { return Device::cuda(index_); }
  const char* name() const noexcept override { return "cuda"; }

  std::string description() const override {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, index_), "cudaGetDeviceProperties");
    return fmt::format("{}, compute {}.{}, {} SMs, {:.1f} GiB", prop.name, prop.major, prop.minor,
                       prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1u << 30));
  }

  void copy_host_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) override {
    const DeviceScope scope(index_);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, native(stream)), "copy host to device");
  }

  void copy_device_to_host(void* dst, const void* src, std::size_t bytes, Stream stream) override {
    const DeviceScope scope(index_);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, native(stream)), "copy device to host");
    check(cudaStreamSynchronize(native(stream)), "copy device to host (synchronize)");
  }

  void copy_device_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) override {
    const DeviceScope scope(index_);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, native(stream)), "copy device to device");
  }

  void synchronize(Stream stream) override {
    const DeviceScope scope(index_);
    check(cudaStreamSynchronize(native(stream)), "cudaStreamSynchronize");
  }

  Stream create_stream() override {
    const DeviceScope scope(index_);
    cudaStream_t stream = nullptr;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    return Stream{stream};
  }

  void destroy_stream(Stream stream) noexcept override {
    if (stream.handle != nullptr) cudaStreamDestroy(native(stream));
  }

  void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
               Stream stream) override {
    const DeviceScope scope(index_);
    check(launch_convert(src, src_dtype, dst, dst_dtype, count, native(stream)), "convert kernel");
  }

  void head_mean(const HeadMeanView& view, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    check(launch_head_mean(view, out, native(stream)), "head_mean kernel");
  }

  void top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                       Stream stream) override {
    const DeviceScope scope(index_);
    if (k <= kWarpTopKMax) {
      check(launch_top_k_warp(view, k, indices, weights, native(stream)), "top_k kernel");
      return;
    }
    std::size_t temp_bytes = 0;
    check(sort_top_k_temp_bytes(view, temp_bytes), "top_k sort (temp size)");
    with_scratch<void>(temp_bytes, stream, "top_k sort", [&](void* temp) {
      return sort_top_k(view, k, indices, weights, temp, temp_bytes, native(stream));
    });
  }

  void head_mean_column_sums(const HeadMeanView& view, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    const std::size_t chunks = column_sum_chunks(view);
    const std::size_t partial_bytes = chunks > 1 ? chunks * view.n_cols * sizeof(float) : 0;
    with_scratch<float>(partial_bytes, stream, "column sums kernel",
                        [&](float* partial) { return launch_column_sums(view, partial, out, native(stream)); });
  }

  std::size_t find_non_finite(const void* data, DType dtype, std::size_t count, Stream stream) override {
    const DeviceScope scope(index_);
    unsigned long long first = count;
    auto* slot = static_cast<unsigned long long*>(allocate(sizeof first, stream));
    cudaError_t status = cudaMemcpyAsync(slot, &first, sizeof first, cudaMemcpyHostToDevice, native(stream));
    if (status == cudaSuccess) status = launch_find_non_finite(data, dtype, count, slot, native(stream));
    if (status == cudaSuccess) {
      status = cudaMemcpyAsync(&first, slot, sizeof first, cudaMemcpyDeviceToHost, native(stream));
    }
    if (status == cudaSuccess) status = cudaStreamSynchronize(native(stream));
    deallocate(slot, sizeof first, stream);
    check(status, "find_non_finite kernel");
    return static_cast<std::size_t>(first);
  }

  void encode_records(const RecordEncode& encode, Stream stream) override {
    const DeviceScope scope(index_);
    with_scratch<float>(encode_scratch_floats(encode) * sizeof(float), stream, "encode_records kernel",
                        [&](float* scratch) { return launch_encode_records(encode, scratch, native(stream)); });
  }

  void score_records(const RecordQuery& query, float* scores, Stream stream) override {
    const DeviceScope scope(index_);
    check(launch_score_records(query, scores, native(stream)), "score_records kernel");
  }

  void attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    with_scratch<float>(
        query.query_heads * query.tokens * sizeof(float), stream, "attend_records kernel",
        [&](float* weights) { return launch_attend_records(query, values, weights, out, native(stream)); });
  }

  void decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    with_scratch<float>(
        decode_scratch_floats(ring, tokens) * sizeof(float), stream, "decode_records kernel",
        [&](float* scratch) { return launch_decode_records(ring, tokens, scratch, out, native(stream)); });
  }

  void copy_tokens(const TokenCopy& copy, Stream stream) override {
    const DeviceScope scope(index_);
    check(launch_copy_tokens(copy, native(stream)), "copy_tokens kernel");
  }

 protected:
  void* do_allocate(std::size_t bytes, Stream stream) override {
    const DeviceScope scope(index_);
    void* ptr = nullptr;
    const cudaError_t status = use_pool_ ? cudaMallocAsync(&ptr, bytes, native(stream)) : cudaMalloc(&ptr, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;
    }
    check(status, "device allocation");
    return ptr;
  }

  void do_deallocate(void* ptr, std::size_t, Stream stream) noexcept override {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(index_);
    if (use_pool_) {
      cudaFreeAsync(ptr, native(stream));
    } else {
      cudaFree(ptr);
    }
    cudaSetDevice(previous);
  }

  std::size_t reserved_bytes() const noexcept override {
    if (!use_pool_) {
      return bytes_in_use();
    }
    std::uint64_t reserved = 0;
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved) != cudaSuccess) {
      return bytes_in_use();
    }
    return static_cast<std::size_t>(reserved);
  }

 private:
  // Runs `launch(scratch)` with `bytes` of stream-ordered scratch (null when
  // 0), frees it, then raises the launch's error under `what`.
  template <class T, class Launch>
  void with_scratch(std::size_t bytes, Stream stream, const char* what, Launch launch) {
    T* scratch = static_cast<T*>(allocate(bytes, stream));
    const cudaError_t status = launch(scratch);
    deallocate(scratch, bytes, stream);
    check(status, what);
  }

  int index_;
  bool use_pool_ = false;
  cudaMemPool_t pool_ = nullptr;
};

}  // namespace

int device_count(std::string& reason) noexcept {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    reason =
        fmt::format("no usable CUDA driver or device ({}: {})", cudaGetErrorName(status), cudaGetErrorString(status));
    return 0;
  }
  if (count == 0) {
    reason = "the CUDA driver reports no device";
  }
  return count;
}

std::unique_ptr<Backend> make_backend(int index) { return std::make_unique<CudaBackend>(index); }

}  // namespace micache::cuda
