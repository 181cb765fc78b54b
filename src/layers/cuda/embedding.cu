// The embedding lookup (fp32 rows of this rank's vocabulary shard) and its
// deterministic backward: one thread per column walks the tokens in order.
#include "glam/layers/cuda/layers.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

// A block per token t (grid-stride over the tokens): its row, or zeros when the
// id is outside this shard.
__global__ void embedding_forward_kernel(float* out, const int32_t* ids, const float* emb, int64_t T, int64_t M,
                                         int64_t row0, int64_t rows) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const int64_t r = ids[t] - row0;
    const bool mine = r >= 0 && r < rows;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) out[t * M + i] = mine ? emb[r * M + i] : 0.0f;
  }
}

// A thread per column i (grid-stride), the tokens in order.
__global__ void embedding_backward_kernel(float* demb, const float* dout, const int32_t* ids, int64_t T,
                                          int64_t M, int64_t row0, int64_t rows) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M; i += int64_t(gridDim.x) * blockDim.x)
    for (int64_t t = 0; t < T; t++) {
      const int64_t r = ids[t] - row0;
      if (r >= 0 && r < rows) demb[r * M + i] += dout[t * M + i];
    }
}

}  // namespace

void embedding_forward(const Context& ctx, float* out, const int32_t* ids, const float* emb, int64_t T,
                       int64_t M, int64_t row0, int64_t rows) {
  if (T == 0) return;
  launch(embedding_forward_kernel, grid_for(T, 1), 128, 0, ctx.stream(), "embedding_forward_kernel", out, ids, emb,
         T, M, row0, rows);
}

void embedding_backward(const Context& ctx, float* demb, const float* dout, const int32_t* ids,
                        int64_t T, int64_t M, int64_t row0, int64_t rows) {
  if (T == 0) return;
  launch(embedding_backward_kernel, grid_for(M, 128), 128, 0, ctx.stream(), "embedding_backward_kernel", demb, dout,
         ids, T, M, row0, rows);
}

void logits_forward(const Context& ctx, float* logits, const bf16* h, const bf16* emb, int64_t T,
                    int64_t M, int64_t Vl, float scale) {
  gemm(ctx, false, true, T, Vl, M, scale, h, M, emb, M, 0.0f, logits, Vl);
}

void logits_backward(const Context& ctx, float* dh, float* demb, const bf16* dlogits, const bf16* h,
                     const bf16* emb, int64_t T, int64_t M, int64_t Vl, float scale) {
  gemm(ctx, false, false, T, M, Vl, scale, dlogits, Vl, emb, M, 1.0f, dh, M);
  gemm(ctx, true, false, Vl, M, T, scale, dlogits, Vl, h, M, 1.0f, demb, M);
}

}  // namespace glam::cuda
