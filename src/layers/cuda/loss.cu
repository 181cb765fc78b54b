// Softmax cross-entropy with z-loss over a vocabulary shard, fp32, as
// cpu::softmax_xent_forward/backward, all on the device: the row max, the sum
// of exp and the target's logit per row, reduced over the model axis (the
// vocabulary split) by the caller's reduce_model, then lse and the loss sums
// (double, one block in a fixed order). The host receives the three sums only.
#include <cmath>

#include "glam/layers/cuda/layers.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kThreads = 256;

// Per row t (a block per row, striding over the rows by the grid): the row's
// maximum over this shard.
__global__ void softmax_xent_forward_max_kernel(float* row_max, const float* logits, int64_t T, int64_t Vl) {
  __shared__ float red[kThreads];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float m = -INFINITY;
    for (int64_t v = threadIdx.x; v < Vl; v += blockDim.x) m = fmaxf(m, logits[t * Vl + v]);
    m = block_max(m, red);
    if (threadIdx.x == 0) row_max[t] = m;
  }
}

// The shard's sum of exp(logit - max) per row, and the target's logit if it is in the shard.
__global__ void softmax_xent_forward_sum_kernel(float* row_sum, float* target_logit, const float* logits,
                                                const float* row_max, const int32_t* targets, int64_t T, int64_t Vl,
                                                int64_t v0) {
  __shared__ float red[kThreads];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float s = 0.0f;
    for (int64_t v = threadIdx.x; v < Vl; v += blockDim.x) s += expf(logits[t * Vl + v] - row_max[t]);
    s = block_sum(s, red);
    if (threadIdx.x == 0) {
      row_sum[t] = s;
      const int64_t c = targets[t] - v0;
      target_logit[t] = targets[t] >= 0 && c >= 0 && c < Vl ? logits[t * Vl + c] : 0.0f;
    }
  }
}

__global__ void softmax_xent_backward_kernel(float* dlogits, const float* logits, const float* lse,
                                             const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                                             float ce_scale, float z_scale) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float* d = dlogits + t * Vl;
    if (targets[t] < 0) {
      for (int64_t v = threadIdx.x; v < Vl; v += blockDim.x) d[v] = 0.0f;
      continue;
    }
    const float coef = ce_scale + z_scale * 2.0f * lse[t];
    const int64_t c = targets[t] - v0;
    for (int64_t v = threadIdx.x; v < Vl; v += blockDim.x)
      d[v] = coef * expf(logits[t * Vl + v] - lse[t]) - (v == c ? ce_scale : 0.0f);
  }
}

// One block: lse[t] = row_max + log(row_sum) and, over valid targets,
// totals = (sum of lse - target logit, sum of lse^2, count).
__global__ void softmax_xent_forward_totals_kernel(double* totals, float* lse, const float* row_max,
                                                   const float* row_sum, const float* target_logit,
                                                   const int32_t* targets, int64_t T) {
  __shared__ double red[3][kThreads];
  double ce = 0.0, z = 0.0, count = 0.0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    const float l = row_max[t] + logf(row_sum[t]);
    lse[t] = l;
    if (targets[t] < 0) continue;
    ce += static_cast<double>(l) - target_logit[t];
    z += static_cast<double>(l) * l;
    count += 1.0;
  }
  red[0][threadIdx.x] = ce;
  red[1][threadIdx.x] = z;
  red[2][threadIdx.x] = count;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k)
      for (int j = 0; j < 3; j++) red[j][threadIdx.x] += red[j][threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x < 3) totals[threadIdx.x] = red[threadIdx.x][0];
}

}  // namespace

cpu::LossSums softmax_xent_forward(const Context& ctx, float* lse, const float* logits,
                                   const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                                   const ReduceModelRows& reduce_model) {
  if (T == 0) return cpu::LossSums{};
  const size_t bytes = T * sizeof(float);
  float* row_max = static_cast<float*>(ctx.scratch(kScratchLossMax, bytes));
  float* row_sum = static_cast<float*>(ctx.scratch(kScratchLossSum, bytes));
  float* target_logit = static_cast<float*>(ctx.scratch(kScratchLossTarget, bytes));
  double* totals = static_cast<double*>(ctx.scratch(kScratchLossTotals, 3 * sizeof(double)));
  launch(softmax_xent_forward_max_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "softmax_xent_forward_max_kernel",
         row_max, logits, T, Vl);
  if (reduce_model) reduce_model(row_max, T, /*max=*/true);
  launch(softmax_xent_forward_sum_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "softmax_xent_forward_sum_kernel",
         row_sum, target_logit, logits, row_max, targets, T, Vl, v0);
  if (reduce_model) {
    reduce_model(row_sum, T, /*max=*/false);
    reduce_model(target_logit, T, /*max=*/false);
  }
  launch(softmax_xent_forward_totals_kernel, 1, kThreads, 0, ctx.stream(), "softmax_xent_forward_totals_kernel", totals,
         lse, row_max, row_sum, target_logit, targets, T);
  double host[3];
  GLAM_CHECK_CUDA(cudaMemcpyAsync(host, totals, sizeof(host), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.sync();
  return cpu::LossSums{host[0], host[1], static_cast<int64_t>(host[2])};
}

void softmax_xent_backward(const Context& ctx, float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale) {
  if (T == 0) return;
  launch(softmax_xent_backward_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "softmax_xent_backward_kernel",
         dlogits, logits, lse, targets, T, Vl, v0, ce_scale, z_scale);
}

}  // namespace glam::cuda
