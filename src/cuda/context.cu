// The CUDA context (stream and cuBLAS handle) and error checking.
#include <atomic>
#include <stdexcept>
#include <string>

#include "glam/cuda/layers.h"
#include "buckets.cuh"

namespace glam::cuda {

namespace {
std::atomic<int> grid_cap{65535};
}

int max_grid_blocks() { return grid_cap.load(); }
void set_max_grid_blocks(int blocks) { grid_cap.store(blocks > 0 ? blocks : 1); }

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusString(st));
}

Context::Context() {
  check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  // Deterministic results: no split-K reductions that depend on the workspace race.
  check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Context::~Context() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [ptr, bytes] : scratch_)
    if (ptr) cudaFree(ptr);
  buckets_.clear();
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void* Context::scratch(ScratchSlot slot, size_t bytes) const {
  auto& [ptr, size] = scratch_[slot];
  if (bytes > size) {
    if (ptr) check(cudaFree(ptr), "cudaFree (scratch)");  // waits for the work using it
    ptr = nullptr;
    size = 0;
    check(cudaMalloc(&ptr, bytes), "cudaMalloc (scratch)");
    size = bytes;
  }
  return ptr;
}

const BucketTables& Context::buckets(int64_t S) const {
  auto& t = buckets_[S];
  if (!t) t = std::make_unique<BucketTables>(S);
  return *t;
}

void Context::sync() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

}  // namespace glam::cuda
