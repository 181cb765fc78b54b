// The CUDA context (stream and cuBLAS handle) and the grid cap.
#include <atomic>
#include <string>

#include "glam/layers/cuda/layers.h"
#include "buckets.cuh"

namespace glam::cuda {

namespace {
std::atomic<int> grid_cap{65535};
}

int max_grid_blocks() { return grid_cap.load(); }
void set_max_grid_blocks(int blocks) { grid_cap.store(blocks > 0 ? blocks : 1); }

Context::Context() {
  GLAM_CHECK_CUDA(cudaStreamCreate(&stream_));
  GLAM_CHECK_CUBLAS(cublasCreate(&blas_));
  GLAM_CHECK_CUBLAS(cublasSetStream(blas_, stream_));
  // Deterministic results: no split-K reductions that depend on the workspace race.
  GLAM_CHECK_CUBLAS(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
}

Context::~Context() {
  if (stream_) GLAM_WARN_CUDA(cudaStreamSynchronize(stream_));
  for (auto& [ptr, bytes] : scratch_)
    if (ptr) GLAM_WARN_CUDA(cudaFree(ptr));
  buckets_.clear();
  if (blas_) GLAM_WARN_CUBLAS(cublasDestroy(blas_));
  if (stream_) GLAM_WARN_CUDA(cudaStreamDestroy(stream_));
}

void* Context::scratch(ScratchSlot slot, size_t bytes) const {
  auto& [ptr, size] = scratch_[slot];
  if (bytes > size) {
    if (ptr) GLAM_CHECK_CUDA(cudaFree(ptr));  // waits for the work using it
    ptr = nullptr;
    size = 0;
    GLAM_CHECK_CUDA(cudaMalloc(&ptr, bytes));
    size = bytes;
  }
  return ptr;
}

const BucketTables& Context::buckets(int64_t S) const {
  auto& t = buckets_[S];
  if (!t) t = std::make_unique<BucketTables>(S);
  return *t;
}

void Context::sync() const { GLAM_CHECK_CUDA(cudaStreamSynchronize(stream_)); }

}  // namespace glam::cuda
