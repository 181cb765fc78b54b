// splitmix64, the one hash glam draws its random numbers from: parameter init
// (params.cpp), mixture sampling (data/mixture.cpp), the router's random second
// choice (cpu/router.cpp and cuda/router.cu, which must agree bit for bit) and
// the checkpoint checksums. Counter-based: any element, row or token draws its
// numbers from its own index, so a shard or a rank draws without the others.
// The functions are __host__ __device__ under nvcc; the CPU emulation of CUDA
// (tests/cuda_emu) compiles them as plain inline C++.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define GLAM_HOST_DEVICE __host__ __device__
#else
#define GLAM_HOST_DEVICE
#endif

namespace glam {

// splitmix64's increment: 2^64 divided by the golden ratio, odd.
constexpr uint64_t kSplitmixGamma = 0x9e3779b97f4a7c15ULL;

// splitmix64's output function: a bijection on 64 bits that mixes every input
// bit into every output bit.
GLAM_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// splitmix64 as a hash of x: the generator's first output from state x.
GLAM_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) { return mix64(x + kSplitmixGamma); }

// Output n (from 0) of the splitmix64 generator started at state `seed`.
GLAM_HOST_DEVICE inline uint64_t splitmix64_at(uint64_t seed, uint64_t n) {
  return mix64(seed + kSplitmixGamma * (n + 1));
}

// U[0,1) from the top 53 bits of `bits`: k / 2^53.
GLAM_HOST_DEVICE inline double unit_interval(uint64_t bits) {
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

// U(0,1] for Box-Muller, which takes its log: the centre (k + 1/2) / 2^53 of the
// cell, never 0 (the top cell's centre rounds to 1).
GLAM_HOST_DEVICE inline double open_unit_interval(uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

}  // namespace glam
