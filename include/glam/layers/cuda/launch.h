// One way to start a kernel, checked: launch(kernel, grid, block, shared_bytes,
// stream, "name", args...) queues kernel<<<grid, block, shared_bytes, stream>>>(args...)
// and turns a launch error into an exception naming the kernel. The CPU
// emulation of the CUDA subset glam uses (tests, no GPU) provides the same call.
// Names (llm.c's): a launcher is <layer>_<pass> (rmsnorm_forward, router_decide,
// adafactor_step), its kernel <layer>_<pass>_kernel, or <layer>_<pass>_<part>_kernel
// where it runs several (attention_backward_dq_kernel); "name" is the kernel's
// name. Helpers that are no layer's pass say what they do (to_bf16_kernel,
// sum_partials_kernel).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace glam::cuda {

#ifndef GLAM_CUDA_EMU
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream, const char* name,
            Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  kernel<<<grid, block, shared, stream>>>(static_cast<KArgs>(args)...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error launching ") + name + ": " + cudaGetErrorString(err));
}
#endif

}  // namespace glam::cuda
