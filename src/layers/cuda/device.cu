// Which GPUs this process sees and which one it uses (device.h).
#include <cuda_runtime.h>

#include <string>

#include "glam/mesh/device.h"

namespace glam {

bool cuda_backend_built() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device (the answer is 0 GPUs): clear the error
    return 0;
  }
  return n;
}

bool cuda_select_device(int index) { return cudaSetDevice(index) == cudaSuccess; }

std::string cuda_device_name() {
  int index = 0;
  if (cudaGetDevice(&index) != cudaSuccess) return "cuda (no device)";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) return "cuda:" + std::to_string(index);
  return "cuda:" + std::to_string(index) + " (" + prop.name + ")";
}

}  // namespace glam
