// CudaBackend: device memory from a stream-ordered pool of micache's own (or
// plain cudaMalloc for sanitizer runs), stream-ordered copies, and the kernels
// of cuda/*.cu.
//
// Errors. Every runtime call is checked where it is made. A call that can
// throw raises Error(Backend) naming itself (`check`); one in a path that
// cannot throw (deallocation, stream destruction, restoring the caller's
// device, the destructor) goes to `defer`, which clears the runtime's last
// error at once, so that no later call reports it as its own, counts it
// (Backend::deferred_errors) and writes the first of the process to stderr.
// Kernel launchers report through cudaGetLastError(); `launch` makes that the
// error of the launch alone (see there).
#include "micache/backend/backends.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda/kernels.hpp"
#include "cuda/radix_select.hpp"
#include "cuda/row_split.hpp"
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

// Errors met where no exception can be thrown, for every CUDA backend of the process.
std::atomic<std::size_t> deferred_error_count{0};

// The noexcept form of `check`: false, with the error cleared, counted and
// (the first of the process) written to stderr, when `status` is an error.
bool defer(cudaError_t status, const char* what) noexcept {
  if (status == cudaSuccess) return true;
  cudaGetLastError();
  if (deferred_error_count.fetch_add(1, std::memory_order_relaxed) == 0) {
    std::fprintf(stderr,
                 "micache: %s failed where no exception can be thrown: %s (%s); the error is cleared and counted "
                 "in Backend::deferred_errors(), and later ones are only counted\n",
                 what, cudaGetErrorName(status), cudaGetErrorString(status));
  }
  return false;
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
      defer(cudaSetDevice(previous_), "cudaSetDevice (restoring the caller's device)");
    }
  }

 private:
  int previous_ = 0;
  int active_ = 0;
};

// A stream-ordered pool of device `index`'s memory that keeps every freed
// block for reuse (release threshold UINT64_MAX) until cudaMemPoolTrimTo.
// Error: Backend when the device refuses (nothing is left behind).
cudaMemPool_t create_pool(int index) {
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = index;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  std::uint64_t keep_everything = UINT64_MAX;
  const cudaError_t status = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything);
  if (status != cudaSuccess) {
    defer(cudaMemPoolDestroy(pool), "cudaMemPoolDestroy");
    check(status, "cudaMemPoolSetAttribute (release threshold)");
  }
  return pool;
}

/// The CUDA implementation of Backend for one device.
///
/// Memory comes from a stream-ordered pool of micache's own on the device
/// (cudaMallocFromPoolAsync / cudaFreeAsync). The pool keeps what is freed,
/// so that a query that synchronises does not hand its scratch back to the
/// driver only to map it again at the next call (the device's default pool,
/// whose release threshold is 0, does that at every synchronisation; it is
/// left alone, since other libraries share it). `memory_stats().reserved` is
/// the pool's cudaMemPoolAttrReservedMemCurrent; `release_unused_memory`
/// (hence KVCache::shrink_to_fit) returns the free blocks to the system.
///
/// The environment variable MICACHE_CUDA_ALLOCATOR=plain, read when the
/// backend is created, selects cudaMalloc/cudaFree instead, so that
/// compute-sanitizer sees every allocation's true bounds (pools hide
/// out-of-bounds accesses); then `reserved` equals `in_use`.
class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index) : index_(index) {
    const DeviceScope scope(index_);
    int pools = 0;
    check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, index_), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, index_), "cudaDeviceGetAttribute");
    const char* mode = std::getenv("MICACHE_CUDA_ALLOCATOR");
    if (pools != 0 && !(mode != nullptr && std::strcmp(mode, "plain") == 0)) {
      pool_ = create_pool(index_);
    }
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // Destroys the pool; memory still allocated from it goes back to the
  // system when freed (cudaMemPoolDestroy's contract).
  ~CudaBackend() override {
    if (pool_ != nullptr) defer(cudaMemPoolDestroy(pool_), "cudaMemPoolDestroy");
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

  void wait_stream(Stream waiter, Stream producer) override {
    if (waiter == producer) return;
    const DeviceScope scope(index_);
    cudaEvent_t event = nullptr;
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "wait_stream (cudaEventCreateWithFlags)");
    cudaError_t status = cudaEventRecord(event, native(producer));
    if (status == cudaSuccess) status = cudaStreamWaitEvent(native(waiter), event, 0);
    defer(cudaEventDestroy(event), "wait_stream (cudaEventDestroy)");  // freed once the event completes
    check(status, "wait_stream (cudaEventRecord, cudaStreamWaitEvent)");
  }

  Stream create_stream() override {
    const DeviceScope scope(index_);
    cudaStream_t stream = nullptr;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    return Stream{stream};
  }

  void destroy_stream(Stream stream) noexcept override {
    if (stream.handle != nullptr) defer(cudaStreamDestroy(native(stream)), "cudaStreamDestroy");
  }

  std::size_t deferred_errors() const noexcept override {
    return deferred_error_count.load(std::memory_order_relaxed);
  }

  void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
               Stream stream) override {
    const DeviceScope scope(index_);
    launch("convert kernel", [&] { return launch_convert(src, src_dtype, dst, dst_dtype, count, native(stream)); });
  }

  void head_mean(const HeadMeanView& view, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    launch("head_mean kernel", [&] { return launch_head_mean(view, out, native(stream)); });
  }

  void top_k_head_mean(const HeadMeanView& view, std::size_t k, std::int32_t* indices, float* weights,
                       Stream stream) override {
    const DeviceScope scope(index_);
    if (k <= kWarpTopKMax) {
      with_scratch<void>(top_k_warp_scratch_bytes(view, k, sms_), stream, "top_k kernel", [&](void* scratch) {
        return launch_top_k_warp(view, k, sms_, scratch, indices, weights, native(stream));
      });
      return;
    }
    if (k <= kSelectMaxK) {
      with_scratch<void>(top_k_select_scratch_bytes(view), stream, "top_k select kernel", [&](void* scratch) {
        return launch_top_k_select(view, k, scratch, indices, weights, native(stream));
      });
      return;
    }
    std::size_t temp_bytes = 0;
    launch("top_k sort (temp size)", [&] { return sort_top_k_temp_bytes(view, temp_bytes); });
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
    if (status == cudaSuccess) {
      status = own_error([&] { return launch_find_non_finite(data, dtype, count, slot, native(stream)); });
    }
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
    with_scratch<void>(encode_scratch_bytes(encode), stream, "encode_records kernel",
                       [&](void* scratch) { return launch_encode_records(encode, scratch, native(stream)); });
  }

  void score_records(const RecordQuery& query, float* scores, Stream stream) override {
    const DeviceScope scope(index_);
    with_scratch<void>(score_scratch_bytes(query), stream, "score_records kernel",
                       [&](void* scratch) { return launch_score_records(query, scratch, scores, native(stream)); });
  }

  void attend_records(const RecordQuery& query, const RecordRing& values, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    with_scratch<void>(
        attend_scratch_bytes(query, values), stream, "attend_records kernel",
        [&](void* scratch) { return launch_attend_records(query, values, scratch, out, native(stream)); });
  }

  void decode_records(const RecordRing& ring, std::size_t tokens, float* out, Stream stream) override {
    const DeviceScope scope(index_);
    with_scratch<void>(
        decode_scratch_bytes(ring, tokens), stream, "decode_records kernel",
        [&](void* scratch) { return launch_decode_records(ring, tokens, scratch, out, native(stream)); });
  }

  void copy_tokens(const TokenCopy& copy, Stream stream) override {
    const DeviceScope scope(index_);
    launch("copy_tokens kernel", [&] { return launch_copy_tokens(copy, native(stream)); });
  }

  void paged_write(const PagedWrite& write, Stream stream) override {
    const DeviceScope scope(index_);
    launch("paged_write kernel", [&] { return launch_paged_write(write, native(stream)); });
  }

  void paged_gather(const PagedGather& gather, Stream stream) override {
    const DeviceScope scope(index_);
    launch("paged_gather kernel", [&] { return launch_paged_gather(gather, native(stream)); });
  }

  void paged_move(const PagedMove& move, Stream stream) override {
    const DeviceScope scope(index_);
    launch("paged_move kernel", [&] { return launch_paged_move(move, native(stream)); });
  }

  void paged_build_step(const PagedStepBuild& build, Stream stream) override {
    const DeviceScope scope(index_);
    launch("paged_build_step kernel", [&] { return launch_paged_build_step(build, native(stream)); });
  }

  void paged_accounting(const PagedAccounting& accounting, Stream stream) override {
    const DeviceScope scope(index_);
    launch("paged_accounting kernel", [&] { return launch_paged_accounting(accounting, native(stream)); });
  }

  void paged_decode_attention(const PagedDecodeAttention& attention, Stream stream) override {
    const DeviceScope scope(index_);
    launch("paged_decode_attention kernel", [&] { return launch_paged_decode_attention(attention, native(stream)); });
  }

 protected:
  void* do_allocate(std::size_t bytes, Stream stream) override {
    const DeviceScope scope(index_);
    void* ptr = nullptr;
    const cudaError_t status =
        pool_ != nullptr ? cudaMallocFromPoolAsync(&ptr, bytes, pool_, native(stream)) : cudaMalloc(&ptr, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;
    }
    check(status, "device allocation");
    return ptr;
  }

  // Frees on `stream` with this device current (the null stream is the
  // current device's). A failure is deferred; when the device cannot be made
  // current the block is not freed (the context is lost by then).
  void do_deallocate(void* ptr, std::size_t, Stream stream) noexcept override {
    int previous = 0;
    if (!defer(cudaGetDevice(&previous), "cudaGetDevice (deallocation)")) return;
    if (previous != index_ && !defer(cudaSetDevice(index_), "cudaSetDevice (deallocation)")) return;
    if (pool_ != nullptr) {
      defer(cudaFreeAsync(ptr, native(stream)), "cudaFreeAsync");
    } else {
      defer(cudaFree(ptr), "cudaFree");
    }
    if (previous != index_) defer(cudaSetDevice(previous), "cudaSetDevice (restoring the caller's device)");
  }

  std::size_t reserved_bytes() const noexcept override {
    if (pool_ == nullptr) {
      return bytes_in_use();
    }
    std::uint64_t reserved = 0;
    if (!defer(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved),
               "cudaMemPoolGetAttribute (reserved memory)")) {
      return bytes_in_use();
    }
    return static_cast<std::size_t>(reserved);
  }

  void do_release_unused_memory(Stream stream) override {
    const DeviceScope scope(index_);
    check(cudaStreamSynchronize(native(stream)), "release unused memory (synchronize)");
    if (pool_ != nullptr) check(cudaMemPoolTrimTo(pool_, 0), "cudaMemPoolTrimTo");
  }

 private:
  // The error of `launcher()` alone: a launcher reports through
  // cudaGetLastError(), which also returns an error that an earlier runtime
  // call left unread. micache leaves none (every call it makes is checked or
  // deferred, both of which clear it), so such an error is the caller's own
  // (an unchecked cudaSetDevice(-1), a bad launch of theirs): it is discarded
  // here rather than reported as micache's, as cudaGetLastError() would have
  // discarded it at their next check. A sticky error (the context is lost,
  // e.g. after an illegal address) cannot be discarded: the launch reports it.
  template <class Launcher>
  static cudaError_t own_error(Launcher&& launcher) {
    cudaGetLastError();
    return launcher();
  }

  // Runs a kernel launcher (a callable returning cudaError_t) and raises its
  // own error (see own_error) as Error(Backend) under `what`. Every kernel op
  // goes through here or through with_scratch.
  template <class Launcher>
  static void launch(const char* what, Launcher&& launcher) {
    check(own_error(launcher), what);
  }

  // Runs `launcher(scratch)` with `bytes` of stream-ordered scratch (null
  // when 0), frees it, then raises the launcher's own error under `what`.
  template <class T, class Launcher>
  void with_scratch(std::size_t bytes, Stream stream, const char* what, Launcher launcher) {
    T* scratch = static_cast<T*>(allocate(bytes, stream));
    const cudaError_t status = own_error([&] { return launcher(scratch); });
    deallocate(scratch, bytes, stream);
    check(status, what);
  }

  int index_;
  int sms_ = 1;  // multiprocessors, for splitting one-row queries over the whole device
  cudaMemPool_t pool_ = nullptr;  // null: plain cudaMalloc (no pool support, or MICACHE_CUDA_ALLOCATOR=plain)
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
