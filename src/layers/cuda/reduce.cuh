// Deterministic block-wide reductions: a fixed tree over shared memory, so the
// same inputs always sum in the same order. blockDim.x must be a power of two
// <= 1024; every thread of the block must call them.
#pragma once
#include <algorithm>
#include <cstdint>

#include "glam/layers/cuda/layers.h"

namespace glam::cuda {

__device__ inline float block_sum(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  float r = shared[0];
  __syncthreads();
  return r;
}

__device__ inline float block_max(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  float r = shared[0];
  __syncthreads();
  return r;
}

// Blocks for n elements at `threads` per block, at most max_grid_blocks(): the
// kernel must stride over its elements (rows) by gridDim.x * blockDim.x (gridDim.x).
inline int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, max_grid_blocks())));
}

}  // namespace glam::cuda
