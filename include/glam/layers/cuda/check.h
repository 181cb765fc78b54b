// Checks of CUDA runtime and cuBLAS calls, beside glam/base/check.h's MPI and HDF5 ones:
//   GLAM_CHECK_CUDA(cudaMalloc(&p, bytes));  GLAM_CHECK_CUBLAS(cublasCreate(&h));
// A failure throws std::runtime_error naming the file, line, the expression and
// the library's error string; main() prints it with the rank and the job ends.
// Cleanup code (destructors, releases) cannot throw: GLAM_WARN_CUDA and
// GLAM_WARN_CUBLAS print the same message to stderr and go on.
// Header-only, so the CPU emulation (tests/cuda_emu) compiles it as plain C++.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace glam::cuda {

inline std::string call_error(const char* lib, const char* error, const char* expr, const char* file, int line) {
  return std::string(lib) + " error: " + error + " in " + expr + " (" + file + ":" + std::to_string(line) + ")";
}

inline void check_cuda_at(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess) throw std::runtime_error(call_error("CUDA", cudaGetErrorString(err), expr, file, line));
}

inline void check_cublas_at(cublasStatus_t st, const char* expr, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(call_error("cuBLAS", cublasGetStatusString(st), expr, file, line));
}

inline void warn_cuda_at(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess)
    std::fprintf(stderr, "glam: warning: %s\n", call_error("CUDA", cudaGetErrorString(err), expr, file, line).c_str());
}

inline void warn_cublas_at(cublasStatus_t st, const char* expr, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    std::fprintf(stderr, "glam: warning: %s\n", call_error("cuBLAS", cublasGetStatusString(st), expr, file, line).c_str());
}

// The older spelling, kept for tests/cuda until it moves to the macros: `what`
// names the call in place of its file and line.
inline void check(cudaError_t err, const char* what) { check_cuda_at(err, what, "?", 0); }
inline void check(cublasStatus_t st, const char* what) { check_cublas_at(st, what, "?", 0); }

}  // namespace glam::cuda

#define GLAM_CHECK_CUDA(call) ::glam::cuda::check_cuda_at((call), #call, __FILE__, __LINE__)
#define GLAM_CHECK_CUBLAS(call) ::glam::cuda::check_cublas_at((call), #call, __FILE__, __LINE__)
#define GLAM_WARN_CUDA(call) ::glam::cuda::warn_cuda_at((call), #call, __FILE__, __LINE__)
#define GLAM_WARN_CUBLAS(call) ::glam::cuda::warn_cublas_at((call), #call, __FILE__, __LINE__)
