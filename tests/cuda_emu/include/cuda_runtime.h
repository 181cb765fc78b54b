// The CUDA subset glam uses, emulated on the CPU (tests/cuda_emu, README there):
// this directory replaces the toolkit's headers in the emulated build only, where
// the .cu files are compiled as C++ and kernels run as calls on host threads.
//  - A launch runs the grid's blocks one after another; each block's threads are
//    fibers on the launching thread (emu.cpp: thread t of the block is fiber t),
//    threadIdx/blockIdx/blockDim/gridDim the current fiber's, __syncthreads a
//    switch back to the block's scheduler.
//  - __shared__ variables are function statics in one linker section that is
//    filled with 0xFF bytes before every block (blocks never overlap); dynamic
//    shared memory (GLAM_DYNAMIC_SHARED in src/layers/cuda/launch.cuh) likewise.
//  - Device memory is host memory filled with 0xFF bytes by cudaMalloc (NaN as
//    floats, -1 as integers), so reads of memory never written show up.
//  - Work is done when it is queued (streams are in order and synchronous), and
//    Counters (glam::cuda::emu::emu_counters) count what the program asked for.
#pragma once
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef GLAM_CUDA_EMU
#define GLAM_CUDA_EMU 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __constant__
#define __shared__ static __attribute__((section("glam_emu_shared")))
#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
// The emulated thread's coordinates, set by the pool before each block (a call:
// GCC 12's UBSan miscompiles null checks of thread_local objects used directly).
namespace cuda_emu {
struct Coords { uint3 thread, block, block_dim, grid_dim; };
const Coords& coords();
}  // namespace cuda_emu
#define threadIdx (::cuda_emu::coords().thread)
#define blockIdx (::cuda_emu::coords().block)
#define blockDim (::cuda_emu::coords().block_dim)
#define gridDim (::cuda_emu::coords().grid_dim)
constexpr int warpSize = 32;

enum cudaError {
  cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9, cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21, cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400, cudaErrorNotReady = 600, cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4,
};
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
typedef enum cudaDataType_t cudaDataType;
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrMaxBlockDimX = 2, cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxSharedMemoryPerBlock = 8, cudaDevAttrWarpSize = 10, cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrClockRate = 13, cudaDevAttrMultiProcessorCount = 16, cudaDevAttrL2CacheSize = 38,
  cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin;
  int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
  int multiProcessorCount, major, minor, l2CacheSize, clockRate;
};
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct CUevent_st;
typedef CUevent_st* cudaEvent_t;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00

cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);

template <class T> cudaError_t cudaMalloc(T** ptr, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(ptr), bytes); }
template <class T> cudaError_t cudaMallocAsync(T** ptr, size_t bytes, cudaStream_t s) {
  return cudaMallocAsync(reinterpret_cast<void**>(ptr), bytes, s);
}
template <class T> cudaError_t cudaMallocHost(T** ptr, size_t bytes) { return cudaMallocHost(reinterpret_cast<void**>(ptr), bytes); }
template <class R, class... P> cudaError_t cudaFuncSetAttribute(R (*func)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// Device functions of the subset.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// glibc declares (without defining) __expf and __logf: macros, not functions.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
inline float __fdividef(float x, float y) { return x / y; }
template <class T> T __ldg(const T* p) { return *p; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// Integer atomics only: glam's kernels never add floats atomically (determinism).
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
T atomicMax(T* p, T v) { T o = *p; while (o < v && !__atomic_compare_exchange_n(p, &o, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {} return o; }
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
T atomicCAS(T* p, T expected, T desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}

namespace glam::cuda::emu {

// What the program asked of the "device" since the start (or reset()).
struct Counters {
  std::atomic<int64_t> mallocs{0}, frees{0}, host_allocs{0}, host_frees{0};
  std::atomic<int64_t> memcpy_h2d{0}, memcpy_d2h{0}, memcpy_d2d{0}, memcpy_h2h{0}, memcpy_default{0};
  std::atomic<int64_t> memsets{0}, launches{0}, blas_calls{0};
  std::atomic<int64_t> stream_syncs{0}, device_syncs{0}, event_syncs{0}, event_records{0};
  std::atomic<int64_t> bytes_in_use{0}, peak_bytes{0};  // device allocations
  void reset();
  int64_t syncs() const { return stream_syncs + device_syncs + event_syncs; }
  int64_t memcpys() const { return memcpy_h2d + memcpy_d2h + memcpy_d2d + memcpy_h2h + memcpy_default; }
};
Counters& emu_counters();
// Bytes of the emulated static shared memory (all kernels' __shared__ variables).
size_t emu_static_shared_bytes();

}  // namespace glam::cuda::emu

namespace cuda_emu {

using Body = void (*)(const void* call);
// Runs body(call) on every thread of every block of the grid; returns (and sets
// as the last error) cudaErrorInvalidConfiguration for a bad grid or block.
cudaError_t launch(const char* name, const void* func, dim3 grid, dim3 block, size_t shmem,
                   cudaStream_t stream, Body body, const void* call);
void syncthreads(const char* file, int line);
void* dynamic_shared();

template <class... P>
struct Call {
  void (*kernel)(P...);
  std::tuple<P...> args;
  static void run(const void* c) {
    const Call& self = *static_cast<const Call*>(c);
    std::apply(self.kernel, self.args);
  }
};

// kernel<<<grid, block, shmem, stream>>>(args...): the arguments are converted to
// the parameters' types once, and every thread gets copies (by value, as CUDA).
template <class... P, class... A>
cudaError_t launch_kernel(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shmem,
                          cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const Call<P...> call{kernel, std::tuple<P...>(std::forward<A>(args)...)};
  return launch(name, reinterpret_cast<const void*>(kernel), grid, block, shmem, stream, &Call<P...>::run, &call);
}

}  // namespace cuda_emu

namespace glam::cuda {

// The emulated build's glam::cuda::launch (include/glam/layers/cuda/launch.h declares the
// nvcc one): launch(kernel, grid, block, shared_bytes, stream, "name", args...)
// runs the kernel and throws naming it if the launch is refused.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream, const char* name,
            Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  const cudaError_t err = ::cuda_emu::launch_kernel(name, kernel, grid, block, shared, stream, std::forward<Args>(args)...);
  cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error launching ") + name + ": " + cudaGetErrorString(err));
}

}  // namespace glam::cuda
