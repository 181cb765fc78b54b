// Dense matmul through cpu::gemm (OpenBLAS in fp32, oneDNN in bf16). Weights are
// stored [in, out] so the forward is a plain row-major GEMM; backward accumulates
// into din and dw.
#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

void matmul_forward(float* out, const float* in, const float* w, int64_t T, int64_t K, int64_t N, Precision p) {
  if (T == 0) return;
  gemm(p, false, false, T, N, K, 1.0f, in, K, w, N, 0.0f, out, N);
}

void matmul_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                     int64_t T, int64_t K, int64_t N, Precision p) {
  if (T == 0) return;
  if (din)  // din[T,K] += dout[T,N] @ w[K,N]^T
    gemm(p, false, true, T, K, N, 1.0f, dout, N, w, N, 1.0f, din, K);
  if (dw)   // dw[K,N] += in[T,K]^T @ dout[T,N]
    gemm(p, true, false, K, N, T, 1.0f, in, K, dout, N, 1.0f, dw, N);
}

}  // namespace glam::cpu
