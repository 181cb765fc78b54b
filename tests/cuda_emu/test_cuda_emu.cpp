// The CPU emulation of CUDA itself (tests/cuda_emu): thread and block coordinates,
// __syncthreads, shared memory (garbage at every block), device memory (garbage,
// range-checked copies), launch errors naming the kernel, streams and events,
// the counters, and bf16 rounding bit for bit against cpu::to_bf16.
// `test_cuda_emu divergent-sync` runs a kernel whose threads wait at different
// __syncthreads: the emulation must abort naming both (cuda_emu_divergent_sync).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "glam/layers/cuda/layers.h"
#include "glam/layers/cpu/gemm.h"
#include "launch.cuh"

namespace cu = glam::cuda;
using glam::cuda::emu::emu_counters;

namespace {

__global__ void coords_kernel(unsigned* out) {
  const uint64_t block = blockIdx.x + uint64_t(gridDim.x) * (blockIdx.y + uint64_t(gridDim.y) * blockIdx.z);
  const uint64_t thread = threadIdx.x + uint64_t(blockDim.x) * (threadIdx.y + uint64_t(blockDim.y) * threadIdx.z);
  unsigned* o = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 6;
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
}

// A tree sum over shared memory: wrong without a working __syncthreads.
__global__ void block_sum_kernel(float* out, const float* in) {
  __shared__ float s[256];
  s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// Reads shared memory before writing it: every block must see garbage, never
// what the block before it wrote.
__global__ void uninitialised_shared_kernel(float* out) {
  __shared__ float s[64];
  GLAM_DYNAMIC_SHARED(float, d);
  out[(blockIdx.x * blockDim.x + threadIdx.x) * 2] = s[threadIdx.x];
  out[(blockIdx.x * blockDim.x + threadIdx.x) * 2 + 1] = d[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = 1.0f;
  d[threadIdx.x] = 2.0f;
}

// Threads that return early do not hold up the others' __syncthreads.
__global__ void early_return_kernel(int* out) {
  __shared__ int s[128];
  if (threadIdx.x >= 100) return;
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[blockIdx.x * 100 + threadIdx.x] = s[99 - threadIdx.x];
}

__global__ void big_dynamic_shared_kernel(float* out) {
  GLAM_DYNAMIC_SHARED(float, d);
  d[threadIdx.x * 1000] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = d[(blockDim.x - 1 - threadIdx.x) * 1000];
}

__global__ void divergent_sync_kernel(float* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

}  // namespace

TEST_CASE("threads, blocks and grids get their coordinates") {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const size_t n = 3 * 2 * 2 * 4 * 3 * 2;
  cu::Buffer<unsigned> out(n * 6);
  cu::launch(coords_kernel, grid, block, 0, nullptr, "coords_kernel", out.data());
  const auto got = out.download();
  size_t e = 0;
  for (unsigned bz = 0; bz < 2; bz++)
    for (unsigned by = 0; by < 2; by++)
      for (unsigned bx = 0; bx < 3; bx++)
        for (unsigned tz = 0; tz < 2; tz++)
          for (unsigned ty = 0; ty < 3; ty++)
            for (unsigned tx = 0; tx < 4; tx++, e += 6) {
              const std::vector<unsigned> want = {tx, ty, tz, bx, by, bz};
              REQUIRE(std::vector<unsigned>(got.begin() + e, got.begin() + e + 6) == want);
            }
}

TEST_CASE("__syncthreads orders shared memory; returned threads leave the barrier") {
  const int blocks = 5, threads = 256;
  std::vector<float> in(blocks * threads);
  for (size_t i = 0; i < in.size(); i++) in[i] = static_cast<float>(i % 97);
  cu::Buffer<float> d_in, d_out(blocks);
  d_in.upload(in);
  for (int rep = 0; rep < 3; rep++) {
    cu::launch(block_sum_kernel, blocks, threads, 0, nullptr, "block_sum_kernel", d_out.data(), d_in.data());
    const auto got = d_out.download();
    for (int b = 0; b < blocks; b++) {
      float want = 0.0f;
      for (int t = 0; t < threads; t++) want += in[b * threads + t];
      REQUIRE(got[b] == want);  // integers: exact in any order
    }
  }
  cu::Buffer<int> out(300);
  cu::launch(early_return_kernel, 3, 128, 0, nullptr, "early_return_kernel", out.data());
  const auto got = out.download();
  for (int b = 0; b < 3; b++)
    for (int t = 0; t < 100; t++) REQUIRE(got[b * 100 + t] == 99 - t);
}

TEST_CASE("shared memory, static and dynamic, is garbage (NaN) at the start of every block") {
  CHECK(glam::cuda::emu::emu_static_shared_bytes() >= 64 * sizeof(float));
  cu::Buffer<float> out(3 * 64 * 2);
  cu::launch(uninitialised_shared_kernel, 3, 64, 64 * sizeof(float), nullptr, "uninitialised_shared_kernel",
             out.data());
  for (float x : out.download()) REQUIRE(std::isnan(x));
}

TEST_CASE("device memory is garbage until written; copies and cuBLAS operands are range-checked; counters") {
  auto& c = emu_counters();
  c.reset();
  float* p = nullptr;
  REQUIRE(cudaMalloc(&p, 100 * sizeof(float)) == cudaSuccess);
  CHECK(c.mallocs == 1);
  CHECK(c.bytes_in_use >= 400);
  std::vector<float> host(100, 1.0f);
  REQUIRE(cudaMemcpy(host.data(), p, 100 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
  for (float x : host) REQUIRE(std::isnan(x));
  host.assign(100, 2.0f);
  CHECK(cudaMemcpy(p, host.data(), 100 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpyAsync(p, p + 50, 50 * sizeof(float), cudaMemcpyDeviceToDevice, nullptr) == cudaSuccess);
  CHECK(cudaMemset(p, 0, 10 * sizeof(float)) == cudaSuccess);
  CHECK(c.memcpy_h2d == 1);
  CHECK(c.memcpy_d2h == 1);
  CHECK(c.memcpy_d2d == 1);
  CHECK(c.memsets == 1);
  // a device side outside any allocation, or past its end, is refused
  CHECK(cudaMemcpy(host.data(), host.data() + 50, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(host.data(), p + 90, 11 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaFree(host.data()) == cudaErrorInvalidValue);
  cudaGetLastError();
  size_t free_bytes = 0, total = 0;
  CHECK(cudaMemGetInfo(&free_bytes, &total) == cudaSuccess);
  CHECK(free_bytes + 400 <= total);
  CHECK(cudaFree(p) == cudaSuccess);
  CHECK(c.frees == 1);
  CHECK(c.bytes_in_use == 0);
  float* pinned = nullptr;
  CHECK(cudaMallocHost(&pinned, 64) == cudaSuccess);
  CHECK(cudaFreeHost(pinned) == cudaSuccess);
  CHECK(c.host_allocs == 1);
  CHECK(c.host_frees == 1);
  CHECK(c.mallocs == 1);  // pinned memory is not device memory
  CHECK(cudaMalloc(&p, 0) == cudaSuccess);
  CHECK(p == nullptr);
  CHECK(cudaFree(nullptr) == cudaSuccess);
}

TEST_CASE("launches: refused configurations throw naming the kernel; dynamic shared memory above 48 KiB needs "
          "cudaFuncSetAttribute; launches are counted") {
  auto& c = emu_counters();
  c.reset();
  cu::Buffer<float> out(1024);
  try {
    cu::launch(big_dynamic_shared_kernel, 1, 2048, 0, nullptr, "big_dynamic_shared_kernel", out.data());
    FAIL("a block of 2048 threads was launched");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("big_dynamic_shared_kernel") != std::string::npos);
  }
  const size_t bytes = 64 * 1000 * sizeof(float);  // 250 KiB > the opt-in limit too
  CHECK_THROWS(cu::launch(big_dynamic_shared_kernel, 1, 64, bytes, nullptr, "big_dynamic_shared_kernel", out.data()));
  const size_t fits = 50 * 1000 * sizeof(float);  // 195 KiB
  CHECK_THROWS(cu::launch(big_dynamic_shared_kernel, 1, 50, fits, nullptr, "big_dynamic_shared_kernel", out.data()));
  cu::allow_shared(big_dynamic_shared_kernel, fits, "big_dynamic_shared_kernel");
  cu::launch(big_dynamic_shared_kernel, 1, 50, fits, nullptr, "big_dynamic_shared_kernel", out.data());
  const auto got = out.download();
  for (int t = 0; t < 50; t++) REQUIRE(got[t] == static_cast<float>(49 - t));
  CHECK(c.launches == 4);
  cu::launch(big_dynamic_shared_kernel, dim3(0), 50, fits, nullptr, "big_dynamic_shared_kernel", out.data());
  CHECK(c.launches == 4);  // an empty grid is not launched
}

TEST_CASE("streams, events and the device: synchronisations are counted, time is the host's") {
  auto& c = emu_counters();
  c.reset();
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  cudaEvent_t a = nullptr, b = nullptr;
  REQUIRE(cudaEventCreate(&a) == cudaSuccess);
  REQUIRE(cudaEventCreate(&b) == cudaSuccess);
  CHECK(cudaEventRecord(a, s) == cudaSuccess);
  cu::Buffer<float> out(1024);
  cu::launch(big_dynamic_shared_kernel, 1, 8, 8 * 1000 * sizeof(float), s, "big_dynamic_shared_kernel", out.data());
  CHECK(cudaEventRecord(b, s) == cudaSuccess);
  CHECK(cudaEventSynchronize(b) == cudaSuccess);
  float ms = -1.0f;
  CHECK(cudaEventElapsedTime(&ms, a, b) == cudaSuccess);
  CHECK(ms >= 0.0f);
  CHECK(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(c.stream_syncs == 1);
  CHECK(c.device_syncs == 1);
  CHECK(c.event_syncs == 1);
  CHECK(c.syncs() == 3);
  CHECK(cudaEventDestroy(a) == cudaSuccess);
  CHECK(cudaEventDestroy(b) == cudaSuccess);
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(cudaStreamSynchronize(s) == cudaErrorInvalidResourceHandle);  // destroyed
  cudaGetLastError();
  int n = 0, dev = -1, sms = 0;
  CHECK(cudaGetDeviceCount(&n) == cudaSuccess);
  CHECK(n == 1);
  CHECK(cudaSetDevice(0) == cudaSuccess);
  CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice);
  CHECK(cudaGetDevice(&dev) == cudaSuccess);
  CHECK(dev == 0);
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  CHECK(sms > 0);
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  CHECK(std::string(prop.name).find("emulation") != std::string::npos);
  cudaGetLastError();
}

TEST_CASE("bf16: __float2bfloat16 rounds as cpu::to_bf16, bit for bit (to nearest even, NaN kept)") {
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 65521) {  // every exponent, many mantissas
    uint32_t v = static_cast<uint32_t>(u);
    float f;
    std::memcpy(&f, &v, 4);
    x.push_back(f);
  }
  for (uint32_t v : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffbfffffu,
                     0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x00000001u, 0x807fffffu, 0x7f7f8000u}) {
    float f;
    std::memcpy(&f, &v, 4);
    x.push_back(f);  // zeros, infinities, NaNs, ties to even, overflow to inf, denormals
  }
  std::vector<uint16_t> want(x.size());
  glam::cpu::to_bf16(want.data(), x.data(), static_cast<int64_t>(x.size()));
  size_t differ = 0;
  for (size_t i = 0; i < x.size(); i++) {
    const __nv_bfloat16 h = __float2bfloat16(x[i]);
    differ += __bfloat16_as_ushort(h) != want[i];
    const float back = __bfloat162float(h);
    if (!std::isnan(back)) differ += back != glam::cpu::bf16_round(x[i]);
  }
  std::printf("  bf16 rounding of %zu floats: %zu differ from cpu::to_bf16 (tolerance 0)\n", x.size(), differ);
  CHECK(differ == 0);
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "divergent-sync") {
    cu::Buffer<float> out(64);
    cu::launch(divergent_sync_kernel, 1, 64, 0, nullptr, "divergent_sync_kernel", out.data());
    std::printf("divergent __syncthreads not detected\n");
    return 0;
  }
  return Catch::Session().run(argc, argv);
}
