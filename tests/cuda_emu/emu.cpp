// The emulated CUDA runtime and cuBLAS (include/cuda_runtime.h explains the model).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/detail/fcontext.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define GLAM_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GLAM_EMU_ASAN 1
#endif
#endif
#ifndef GLAM_EMU_ASAN
#define GLAM_EMU_ASAN 0
#endif
#if GLAM_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace {
using boost::context::detail::fcontext_t;
using boost::context::detail::jump_fcontext;
using boost::context::detail::make_fcontext;
using boost::context::detail::transfer_t;
// The running emulated thread's coordinates: the scheduler points this at the
// fiber's own before each switch to it (on the host, outside kernels: zeros).
const cuda_emu::Coords kHostCoords{};
thread_local const cuda_emu::Coords* tl_coords = &kHostCoords;
}  // namespace
const cuda_emu::Coords& cuda_emu::coords() { return *tl_coords; }

// Bounds of the section that holds every __shared__ variable (GNU ld defines
// them for a section named like a C identifier; weak: null when there is none).
extern "C" char __start_glam_emu_shared[] __attribute__((weak));
extern "C" char __stop_glam_emu_shared[] __attribute__((weak));

namespace glam::cuda::emu {

Counters& emu_counters() {
  static Counters c;
  return c;
}

void Counters::reset() {
  for (auto* c : {&mallocs, &frees, &host_allocs, &host_frees, &memcpy_h2d, &memcpy_d2h, &memcpy_d2d, &memcpy_h2h,
                  &memcpy_default, &memsets, &launches, &blas_calls, &stream_syncs, &device_syncs, &event_syncs,
                  &event_records})
    c->store(0);
  peak_bytes.store(bytes_in_use.load());
}

size_t emu_static_shared_bytes() {
  return __start_glam_emu_shared ? static_cast<size_t>(__stop_glam_emu_shared - __start_glam_emu_shared) : 0;
}

}  // namespace glam::cuda::emu

struct CUstream_st { unsigned flags; };
struct CUevent_st { std::chrono::steady_clock::time_point t; bool recorded; unsigned flags; };
struct cublasContext { cudaStream_t stream; };

namespace {

using glam::cuda::emu::emu_counters;
constexpr unsigned char kGarbage = 0xFF;  // NaN as float, bf16 and double; -1 as any integer
constexpr size_t kSharedLimit = 48 * 1024, kSharedOptinLimit = 227 * 1024;
constexpr size_t kDeviceMemory = size_t(80) << 30;

thread_local cudaError_t last_error = cudaSuccess;
cudaError_t fail(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

// ---- memory: every allocation is registered, so copies and cuBLAS can check ranges
enum class Kind { device, pinned };
struct Registry {
  std::mutex m;
  std::map<uintptr_t, std::pair<size_t, Kind>> allocs;  // start -> (bytes, kind)
  std::set<cudaStream_t> streams;
  std::set<cudaEvent_t> events;
  std::map<const void*, int> max_dynamic_shared;  // cudaFuncSetAttribute
};
Registry& reg() {
  static Registry r;
  return r;
}

// Whether [p, p + bytes) lies inside one device or pinned allocation.
bool device_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(reg().m);
  auto it = reg().allocs.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == reg().allocs.begin()) return false;
  --it;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a >= it->first && a + bytes <= it->first + it->second.first;
}

cudaError_t allocate(void** ptr, size_t bytes, Kind kind) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) return fail(cudaErrorMemoryAllocation);
  std::memset(p, kGarbage, bytes);
  {
    std::lock_guard<std::mutex> lock(reg().m);
    reg().allocs[reinterpret_cast<uintptr_t>(p)] = {bytes, kind};
  }
  auto& c = emu_counters();
  if (kind == Kind::pinned) {
    c.host_allocs++;
  } else {
    c.mallocs++;
    const int64_t now = c.bytes_in_use += static_cast<int64_t>(bytes);
    int64_t peak = c.peak_bytes.load();
    while (now > peak && !c.peak_bytes.compare_exchange_weak(peak, now)) {}
  }
  *ptr = p;
  return cudaSuccess;
}

cudaError_t release(void* p, Kind kind) {
  if (!p) return cudaSuccess;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(reg().m);
    auto it = reg().allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == reg().allocs.end() || it->second.second != kind) return fail(cudaErrorInvalidValue);
    bytes = it->second.first;
    reg().allocs.erase(it);
  }
  std::free(p);
  auto& c = emu_counters();
  if (kind == Kind::pinned) {
    c.host_frees++;
  } else {
    c.frees++;
    c.bytes_in_use -= static_cast<int64_t>(bytes);
  }
  return cudaSuccess;
}

bool valid_stream(cudaStream_t s) {
  if (!s) return true;
  std::lock_guard<std::mutex> lock(reg().m);
  return reg().streams.count(s) > 0;
}

bool valid_event(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(reg().m);
  return e && reg().events.count(e) > 0;
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return fail(cudaErrorInvalidMemcpyDirection);
  if (bytes == 0) return cudaSuccess;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (!dst || !src || (dst_dev && !device_range(dst, bytes)) || (src_dev && !device_range(src, bytes))) {
    std::fprintf(stderr, "cuda_emu: cudaMemcpy kind %d of %zu bytes %p <- %p: a device side is not a device allocation\n",
                 static_cast<int>(kind), bytes, dst, src);
    return fail(cudaErrorInvalidValue);
  }
  std::memcpy(dst, src, bytes);
  auto& c = emu_counters();
  std::atomic<int64_t>* counter[] = {&c.memcpy_h2h, &c.memcpy_h2d, &c.memcpy_d2h, &c.memcpy_d2d, &c.memcpy_default};
  (*counter[kind])++;
  return cudaSuccess;
}

cudaError_t fill(void* p, int value, size_t bytes, cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!device_range(p, bytes)) return fail(cudaErrorInvalidValue);
  std::memset(p, value, bytes);
  emu_counters().memsets++;
  return cudaSuccess;
}

// ---- the fibers that run kernels --------------------------------------------------
struct Job {
  const char* name = nullptr;
  cuda_emu::Body body = nullptr;
  const void* call = nullptr;
  dim3 grid, block;
  unsigned threads = 0;
  uint64_t blocks = 0;
  unsigned char* dynamic = nullptr;
  size_t dynamic_bytes = 0;
};

#if GLAM_EMU_ASAN
constexpr size_t kFiberStack = 256 * 1024;
#else
constexpr size_t kFiberStack = 64 * 1024;
#endif

// Thread t of every block is fiber t (Boost.Context's fcontext), created once with a
// stack of its own (a guard page below it) and run on the launching thread: one
// kernel at a time (launch_mutex_), the blocks of a grid in order. A block runs in
// rounds: each fiber still running is resumed in turn and runs until it reaches a
// __syncthreads (it switches back to the scheduler) or returns from the kernel (it
// leaves the block's barriers, as on the GPU). When every thread still running
// waits at a barrier they must all be at the same __syncthreads, and the next round
// starts; the block ends when all its threads have returned. A fiber never ends: it
// loops over the kernel body, once per block, across launches.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool;  // never destroyed: fiber stacks are reused by every launch
    return *pool;
  }

  void run(const Job& job) {
    std::lock_guard<std::mutex> launch_lock(launch_mutex_);
    while (fibers_.size() < job.threads) add_fiber();
    job_ = job;
    const dim3 b = job.block, g = job.grid;
    for (unsigned t = 0; t < job.threads; t++) {
      fibers_[t].coords.thread = {t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
      fibers_[t].coords.block_dim = {b.x, b.y, b.z};
      fibers_[t].coords.grid_dim = {g.x, g.y, g.z};
    }
    const cuda_emu::Coords* host_coords = tl_coords;
    for (uint64_t n = 0; n < job.blocks; n++) {
      const uint3 block = {static_cast<unsigned>(n % g.x), static_cast<unsigned>((n / g.x) % g.y),
                           static_cast<unsigned>(n / (uint64_t(g.x) * g.y))};
      for (unsigned t = 0; t < job.threads; t++) fibers_[t].coords.block = block;
      run_block();
    }
    tl_coords = host_coords;
  }

  // Called by the running fiber: back to the scheduler until the block's barrier opens.
  void sync(const char* file, int line) {
    if (current_ == kNone) {
      std::fprintf(stderr, "cuda_emu: __syncthreads (%s:%d) outside a kernel\n", file, line);
      std::abort();
    }
    Fiber& f = fibers_[current_];
    f.file = file;
    f.line = line;
    f.exited = false;
    to_scheduler();
  }

  void* dynamic_shared() const { return job_.dynamic; }

 private:
  static constexpr unsigned kNone = ~0u;
  struct Fiber {
    fcontext_t ctx = nullptr;
    unsigned char* stack_bottom = nullptr;  // above the guard page
    cuda_emu::Coords coords{};
    const char* file = nullptr;
    int line = 0;
    bool exited = false;
    void* fake_stack = nullptr;  // ASan's, while switched out
  };

  void add_fiber() {
    static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) {
      std::fprintf(stderr, "cuda_emu: no memory for a fiber stack of %zu bytes\n", kFiberStack);
      std::abort();
    }
    Fiber f;
    f.stack_bottom = static_cast<unsigned char*>(p) + page;
    f.ctx = make_fcontext(f.stack_bottom + kFiberStack, kFiberStack, &Pool::fiber_main);
    fibers_.push_back(f);
  }

  static void fiber_main(transfer_t from) {
    Pool* pool = static_cast<Pool*>(from.data);
    pool->scheduler_ = from.fctx;
#if GLAM_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &pool->sched_stack_, &pool->sched_stack_size_);
#endif
    for (;;) {
      pool->job_.body(pool->job_.call);
      pool->fibers_[pool->current_].exited = true;
      pool->to_scheduler();
    }
  }

  // From the running fiber to the scheduler; returns when the scheduler resumes it.
  void to_scheduler() {
#if GLAM_EMU_ASAN
    Fiber& f = fibers_[current_];
    __sanitizer_start_switch_fiber(&f.fake_stack, sched_stack_, sched_stack_size_);
#endif
    scheduler_ = jump_fcontext(scheduler_, nullptr).fctx;
#if GLAM_EMU_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, &sched_stack_, &sched_stack_size_);
#endif
  }

  // From the scheduler to fiber t, until it waits at a barrier or returns.
  void resume(unsigned t) {
    Fiber& f = fibers_[t];
    current_ = t;
    tl_coords = &f.coords;
#if GLAM_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack_bottom, kFiberStack);
#endif
    f.ctx = jump_fcontext(f.ctx, this).fctx;
#if GLAM_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    current_ = kNone;
  }

  // Every thread of the block runs again, on garbage shared memory.
  void run_block() {
    if (__start_glam_emu_shared)
      std::memset(__start_glam_emu_shared, kGarbage, static_cast<size_t>(__stop_glam_emu_shared - __start_glam_emu_shared));
    if (job_.dynamic_bytes) std::memset(job_.dynamic, kGarbage, job_.dynamic_bytes);
    live_.resize(job_.threads);
    for (unsigned t = 0; t < job_.threads; t++) live_[t] = t;
    while (!live_.empty()) {
      size_t waiting = 0;
      for (unsigned t : live_) {
        resume(t);
        if (!fibers_[t].exited) live_[waiting++] = t;
      }
      live_.resize(waiting);
      if (!live_.empty()) check_same_barrier();
    }
  }

  // All running threads have arrived: they must be at the same __syncthreads.
  void check_same_barrier() {
    const Fiber& site = fibers_[live_.front()];
    for (unsigned t : live_) {
      const Fiber& f = fibers_[t];
      if (f.line != site.line || std::strcmp(f.file, site.file) != 0) {
        const uint3 b = site.coords.block;
        std::fprintf(stderr, "cuda_emu: %s block (%u,%u,%u): threads wait at different __syncthreads, %s:%d and %s:%d\n",
                     job_.name, b.x, b.y, b.z, site.file, site.line, f.file, f.line);
        std::abort();
      }
    }
  }

  std::mutex launch_mutex_;
  Job job_;
  std::deque<Fiber> fibers_;  // (a deque: a switched-out fiber holds a reference to its own)
  std::vector<unsigned> live_;  // the block's threads that have not returned
  unsigned current_ = kNone;    // the running fiber
  fcontext_t scheduler_ = nullptr;
  const void* sched_stack_ = nullptr;  // ASan: the launching thread's stack
  size_t sched_stack_size_ = 0;
};

// GLAM_CUDA_EMU_PROFILE=1: each kernel's launches, blocks and seconds, printed at exit.
struct Profile {
  std::mutex m;
  std::map<std::string, std::tuple<int64_t, uint64_t, double>> kernels;
  ~Profile() {
    for (const auto& [name, k] : kernels)
      std::fprintf(stderr, "cuda_emu profile: %-36s %6lld launches %9llu blocks %8.3f s\n", name.c_str(),
                   static_cast<long long>(std::get<0>(k)), static_cast<unsigned long long>(std::get<1>(k)),
                   std::get<2>(k));
  }
};
bool profile() {
  static const bool on = std::getenv("GLAM_CUDA_EMU_PROFILE") != nullptr;
  return on;
}
void profile_add(const char* name, uint64_t blocks, std::chrono::steady_clock::duration d) {
  static Profile p;
  std::lock_guard<std::mutex> lock(p.m);
  auto& k = p.kernels[name];
  std::get<0>(k)++;
  std::get<1>(k) += blocks;
  std::get<2>(k) += std::chrono::duration<double>(d).count();
}

}  // namespace

namespace cuda_emu {

cudaError_t launch(const char* name, const void* func, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                   Body body, const void* call) {
  emu_counters().launches++;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "cuda_emu: %s launched with grid (%u,%u,%u) and block (%u,%u,%u)\n", name, grid.x, grid.y,
                 grid.z, block.x, block.y, block.z);
    return fail(cudaErrorInvalidConfiguration);
  }
  size_t limit = kSharedLimit;
  {
    std::lock_guard<std::mutex> lock(reg().m);
    auto it = reg().max_dynamic_shared.find(func);
    if (it != reg().max_dynamic_shared.end()) limit = static_cast<size_t>(it->second);
  }
  if (shmem > limit) {
    std::fprintf(stderr, "cuda_emu: %s asks for %zu bytes of dynamic shared memory (limit %zu)\n", name, shmem, limit);
    return fail(cudaErrorInvalidValue);
  }
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  std::unique_ptr<unsigned char[]> dynamic(shmem ? new unsigned char[shmem + 256] : nullptr);
  Job job;
  job.name = name;
  job.body = body;
  job.call = call;
  job.grid = grid;
  job.block = block;
  job.threads = static_cast<unsigned>(threads);
  job.blocks = uint64_t(grid.x) * grid.y * grid.z;
  job.dynamic = dynamic ? dynamic.get() + (256 - reinterpret_cast<uintptr_t>(dynamic.get()) % 256) : nullptr;
  job.dynamic_bytes = shmem;
  const auto start = std::chrono::steady_clock::now();
  Pool::get().run(job);
  if (profile()) profile_add(name, job.blocks, std::chrono::steady_clock::now() - start);
  return cudaSuccess;
}

void syncthreads(const char* file, int line) { Pool::get().sync(file, line); }
void* dynamic_shared() { return Pool::get().dynamic_shared(); }

}  // namespace cuda_emu

// ---- the runtime API ----------------------------------------------------------------
cudaError_t cudaMalloc(void** ptr, size_t bytes) { return allocate(ptr, bytes, Kind::device); }
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t s) {
  return valid_stream(s) ? cudaMalloc(ptr, bytes) : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaFree(void* ptr) { return release(ptr, Kind::device); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t s) {
  return valid_stream(s) ? cudaFree(ptr) : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaMallocHost(void** ptr, size_t bytes) { return allocate(ptr, bytes, Kind::pinned); }
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned) { return allocate(ptr, bytes, Kind::pinned); }
cudaError_t cudaFreeHost(void* ptr) { return release(ptr, Kind::pinned); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return copy(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  return copy(dst, src, bytes, kind, s);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return fill(p, value, bytes, nullptr); }
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) { return fill(p, value, bytes, s); }

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (!s) return fail(cudaErrorInvalidValue);
  *s = new CUstream_st{flags};
  std::lock_guard<std::mutex> lock(reg().m);
  reg().streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  std::lock_guard<std::mutex> lock(reg().m);
  if (!s || !reg().streams.erase(s)) return fail(cudaErrorInvalidResourceHandle);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  emu_counters().stream_syncs++;
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return valid_stream(s) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle); }
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  return valid_stream(s) && valid_event(e) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaDeviceSynchronize() {
  emu_counters().device_syncs++;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  if (!e) return fail(cudaErrorInvalidValue);
  *e = new CUevent_st{{}, false, flags};
  std::lock_guard<std::mutex> lock(reg().m);
  reg().events.insert(*e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!valid_event(e) || !valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  e->t = std::chrono::steady_clock::now();  // the work queued before it is already done
  e->recorded = true;
  emu_counters().event_records++;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!valid_event(e)) return fail(cudaErrorInvalidResourceHandle);
  emu_counters().event_syncs++;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return valid_event(e) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!ms) return fail(cudaErrorInvalidValue);
  if (!valid_event(a) || !valid_event(b) || ((a->flags | b->flags) & cudaEventDisableTiming))
    return fail(cudaErrorInvalidResourceHandle);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(reg().m);
  if (!e || !reg().events.erase(e)) return fail(cudaErrorInvalidResourceHandle);
  delete e;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return fail(cudaErrorInvalidValue);
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int* d) {
  if (!d) return fail(cudaErrorInvalidValue);
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!p) return fail(cudaErrorInvalidValue);
  if (d != 0) return fail(cudaErrorInvalidDevice);
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "glam CUDA emulation on the CPU");
  p->totalGlobalMem = kDeviceMemory;
  p->sharedMemPerBlock = kSharedLimit;
  p->sharedMemPerBlockOptin = kSharedOptinLimit;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->multiProcessorCount = 132;
  p->major = 9;
  p->minor = 0;
  p->l2CacheSize = 50 << 20;
  p->clockRate = 1980000;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  cudaDeviceProp p;
  if (!v) return fail(cudaErrorInvalidValue);
  if (cudaGetDeviceProperties(&p, d) != cudaSuccess) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *v = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxGridDimX: *v = p.maxGridSize[0]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrWarpSize: *v = p.warpSize; break;
    case cudaDevAttrMaxRegistersPerBlock: *v = p.regsPerBlock; break;
    case cudaDevAttrClockRate: *v = p.clockRate; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrL2CacheSize: *v = p.l2CacheSize; break;
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(p.sharedMemPerBlockOptin); break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
  *total_bytes = kDeviceMemory;
  *free_bytes = kDeviceMemory - static_cast<size_t>(emu_counters().bytes_in_use.load());
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > kSharedOptinLimit)
    return fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(reg().m);
  reg().max_dynamic_shared[func] = value;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

// ---- cuBLAS ---------------------------------------------------------------------------
namespace {

bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }
size_t type_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

float load(const void* p, cudaDataType t, int64_t i) {
  return t == CUDA_R_32F ? static_cast<const float*>(p)[i] : __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

// Elements a column-major operand of `rows` x `cols` with leading dimension ld
// spans in each of `batch` matrices `stride` apart.
bool operand_in_device(const void* p, cudaDataType t, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
                       int64_t batch, const char* what) {
  if (rows == 0 || cols == 0 || batch == 0) return true;
  const int64_t n = (cols - 1) * ld + rows + (batch - 1) * stride;
  if (p && stride >= 0 && device_range(p, static_cast<size_t>(n) * type_size(t))) return true;
  std::fprintf(stderr, "cuda_emu: cuBLAS operand %s (%lld x %lld, ld %lld, %lld batches) is not in device memory\n",
               what, static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(ld),
               static_cast<long long>(batch));
  return false;
}

// C = alpha op(A) op(B) + beta C, column-major, batch matrices at the strides.
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    const void* alpha, const void* A, cudaDataType at, int lda, long long sa, const void* B,
                    cudaDataType bt, int ldb, long long sb, const void* beta, void* C, cudaDataType ct, int ldc,
                    long long sc, int batch, cublasComputeType_t compute) {
  emu_counters().blas_calls++;
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int rows_a = ta == CUBLAS_OP_N ? m : k, cols_a = ta == CUBLAS_OP_N ? k : m;
  const int rows_b = tb == CUBLAS_OP_N ? k : n, cols_b = tb == CUBLAS_OP_N ? n : k;
  if (!valid_op(ta) || !valid_op(tb) || m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, rows_a) ||
      ldb < std::max(1, rows_b) || ldc < std::max(1, m) || !alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  const bool bf16_in = at == CUDA_R_16BF && bt == CUDA_R_16BF && (ct == CUDA_R_32F || ct == CUDA_R_16BF);
  const bool f32_in = at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F;
  if (!(bf16_in || f32_in) || !(compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  if (m == 0 || n == 0 || batch == 0 || ((a == 0.0f || k == 0) && b == 1.0f)) return CUBLAS_STATUS_SUCCESS;
  const bool products = a != 0.0f && k > 0;
  if ((products && (!operand_in_device(A, at, rows_a, cols_a, lda, sa, batch, "A") ||
                    !operand_in_device(B, bt, rows_b, cols_b, ldb, sb, batch, "B"))) ||
      !operand_in_device(C, ct, m, n, ldc, sc, batch, "C"))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  std::vector<float> opa(products ? size_t(m) * k : 0), opb(products ? size_t(n) * k : 0);
  for (int64_t z = 0; z < batch; z++) {
    if (products) {  // op(A) row i and op(B) column j, contiguous over l
      for (int64_t i = 0; i < m; i++)
        for (int64_t l = 0; l < k; l++)
          opa[i * k + l] = load(A, at, z * sa + (ta == CUBLAS_OP_N ? l * lda + i : i * lda + l));
      for (int64_t j = 0; j < n; j++)
        for (int64_t l = 0; l < k; l++)
          opb[j * k + l] = load(B, bt, z * sb + (tb == CUBLAS_OP_N ? j * ldb + l : l * ldb + j));
    }
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < m; i++) {
        float acc = 0.0f;
        if (products)
          for (int64_t l = 0; l < k; l++) acc += opa[i * k + l] * opb[j * k + l];
        const int64_t c = z * sc + j * ldc + i;
        const float r = b == 0.0f ? a * acc : a * acc + b * load(C, ct, c);
        if (ct == CUDA_R_32F) static_cast<float*>(C)[c] = r;
        else static_cast<__nv_bfloat16*>(C)[c] = __float2bfloat16(r);
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}

int64_t strided(int64_t i, int n, int inc) { return inc >= 0 ? i * inc : (n - 1 - i) * int64_t(-inc); }

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new cublasContext{nullptr};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!valid_stream(s)) return CUBLAS_STATUS_INVALID_VALUE;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream(cublasHandle_t h, cudaStream_t* s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!s) return CUBLAS_STATUS_INVALID_VALUE;
  *s = h->stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) { return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED; }
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t mode) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  return mode == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return cublasGetStatusName(s);
  }
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType at, int lda, const void* B,
                            cudaDataType bt, int ldb, const void* beta, void* C, cudaDataType ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  return gemm(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1, compute);
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType at, int lda,
                                          long long sa, const void* B, cudaDataType bt, int ldb, long long sb,
                                          const void* beta, void* C, cudaDataType ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t compute, cublasGemmAlgo_t) {
  return gemm(h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, compute);
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc) {
  return gemm(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C, CUDA_R_32F, ldc, 0,
              1, CUBLAS_COMPUTE_32F);
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float* alpha, const float* A, int lda, long long sa,
                                         const float* B, int ldb, long long sb, const float* beta, float* C, int ldc,
                                         long long sc, int batch) {
  return gemm(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, sa, B, CUDA_R_32F, ldb, sb, beta, C, CUDA_R_32F, ldc,
              sc, batch, CUBLAS_COMPUTE_32F);
}
cublasStatus_t cublasSaxpy(cublasHandle_t h, int n, const float* alpha, const float* x, int incx, float* y, int incy) {
  emu_counters().blas_calls++;
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!alpha) return CUBLAS_STATUS_INVALID_VALUE;
  if (n <= 0) return CUBLAS_STATUS_SUCCESS;
  if (!operand_in_device(x, CUDA_R_32F, 1, n, std::abs(incx), 0, 1, "x") ||
      !operand_in_device(y, CUDA_R_32F, 1, n, std::abs(incy), 0, 1, "y"))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  for (int64_t i = 0; i < n; i++) y[strided(i, n, incy)] += *alpha * x[strided(i, n, incx)];
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSscal(cublasHandle_t h, int n, const float* alpha, float* x, int incx) {
  emu_counters().blas_calls++;
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!alpha) return CUBLAS_STATUS_INVALID_VALUE;
  if (n <= 0 || incx <= 0) return CUBLAS_STATUS_SUCCESS;
  if (!operand_in_device(x, CUDA_R_32F, 1, n, incx, 0, 1, "x")) return CUBLAS_STATUS_EXECUTION_FAILED;
  for (int64_t i = 0; i < n; i++) x[i * incx] *= *alpha;
  return CUBLAS_STATUS_SUCCESS;
}
