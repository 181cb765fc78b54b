// GEMMs through cuBLAS (bf16 operands, fp32 accumulation and result) and the
// bf16 <-> fp32 conversions that feed them.
#include "glam/layers/cuda/layers.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

__global__ void to_bf16_kernel(bf16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(in[i]);
}

__global__ void to_f32_kernel(float* out, const bf16* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}

}  // namespace

void to_bf16(const Context& ctx, bf16* out, const float* in, int64_t n) {
  if (n > 0) launch(to_bf16_kernel, grid_for(n, 256), 256, 0, ctx.stream(), "to_bf16_kernel", out, in, n);
}

void to_f32(const Context& ctx, float* out, const bf16* in, int64_t n) {
  if (n > 0) launch(to_f32_kernel, grid_for(n, 256), 256, 0, ctx.stream(), "to_f32_kernel", out, in, n);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets the
// operands swapped, each with its own transpose flag, and the sizes (n, m, k).
void gemm(const Context& ctx, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta,
          float* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  GLAM_CHECK_CUBLAS(cublasGemmEx(ctx.blas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                     trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                     static_cast<int>(k), &alpha, B, CUDA_R_16BF, static_cast<int>(ldb), A,
                     CUDA_R_16BF, static_cast<int>(lda), &beta, C, CUDA_R_32F, static_cast<int>(ldc),
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_f32(const Context& ctx, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
              float* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  GLAM_CHECK_CUBLAS(cublasSgemm(ctx.blas(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                    static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, B,
                    static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(ldc)));
}

void add_into(const Context& ctx, float* y, const float* x, int64_t n) {
  const float one = 1.0f;
  if (n > 0) GLAM_CHECK_CUBLAS(cublasSaxpy(ctx.blas(), static_cast<int>(n), &one, x, 1, y, 1));
}

void matmul_forward(const Context& ctx, float* out, const bf16* in, const bf16* w, int64_t T,
                    int64_t K, int64_t N) {
  gemm(ctx, false, false, T, N, K, 1.0f, in, K, w, N, 0.0f, out, N);
}

void matmul_backward(const Context& ctx, float* din, float* dw, const bf16* dout, const bf16* in,
                     const bf16* w, int64_t T, int64_t K, int64_t N) {
  if (din) gemm(ctx, false, true, T, K, N, 1.0f, dout, N, w, N, 1.0f, din, K);
  if (dw) gemm(ctx, true, false, K, N, T, 1.0f, in, K, dout, N, 1.0f, dw, N);
}

}  // namespace glam::cuda
