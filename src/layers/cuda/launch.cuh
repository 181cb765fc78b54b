// What the kernels of src/layers/cuda share beyond the launch itself (glam/layers/cuda/launch.h:
// launch(kernel, grid, block, shared_bytes, stream, "name", args...), whose CPU
// emulation tests/cuda_emu provides): dynamic shared memory in both builds.
#pragma once
#include <cuda_runtime.h>

#include "glam/layers/cuda/launch.h"
#include "glam/layers/cuda/layers.h"

// The block's dynamic shared memory (the launch's shared_bytes) as `type name[]`
// (in the emulation `extern __shared__` does not parse).
#ifdef GLAM_CUDA_EMU
#define GLAM_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::cuda_emu::dynamic_shared())
#else
#define GLAM_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// Unrolls the next loop under nvcc (a register array indexed by it stays in registers).
#ifdef __CUDACC__
#define GLAM_UNROLL _Pragma("unroll")
#else
#define GLAM_UNROLL
#endif

namespace glam::cuda {

// Lets `kernel` take `bytes` of dynamic shared memory (more than 48 KiB needs it).
template <typename... P>
void allow_shared(void (*kernel)(P...), size_t bytes, const char* name) {
  GLAM_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace glam::cuda
