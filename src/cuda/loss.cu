// Softmax cross-entropy with z-loss over a vocabulary shard, fp32, as
// cpu::softmax_xent_forward/backward. Per-row statistics are computed on the
// GPU; their reductions over the model axis (the vocabulary split) go through
// the mesh on the host, T floats at a time.
#include <cmath>
#include <vector>

#include "glam/cuda/layers.h"
#include "glam/mesh.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kThreads = 256;

// Per row t (a block per row, striding over the rows by the grid): the row's
// maximum over this shard.
__global__ void softmax_xent_max_kernel(float* row_max, const float* logits, int64_t T, int64_t Vl) {
  __shared__ float red[kThreads];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float m = -INFINITY;
    for (int64_t v = threadIdx.x; v < Vl; v += blockDim.x) m = fmaxf(m, logits[t * Vl + v]);
    m = block_max(m, red);
    if (threadIdx.x == 0) row_max[t] = m;
  }
}

// The shard's sum of exp(logit - max) per row, and the target's logit if it is in the shard.
__global__ void softmax_xent_sum_kernel(float* row_sum, float* target_logit, const float* logits,
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

std::vector<float> to_host(const float* d, int64_t n) {
  std::vector<float> h(n);
  check(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), "softmax_xent_forward");
  return h;
}

}  // namespace

cpu::LossSums softmax_xent_forward(const Context& ctx, float* lse, const float* logits,
                                   const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                                   const Mesh& mesh) {
  if (T == 0) return cpu::LossSums{};
  const size_t bytes = T * sizeof(float);
  float* row_max = static_cast<float*>(ctx.scratch(kScratchLossMax, bytes));
  float* row_sum = static_cast<float*>(ctx.scratch(kScratchLossSum, bytes));
  float* target_logit = static_cast<float*>(ctx.scratch(kScratchLossTarget, bytes));
  launch(softmax_xent_max_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "softmax_xent_max_kernel", row_max,
         logits, T, Vl);
  ctx.sync();
  std::vector<float> host_max = to_host(row_max, T);
  mesh.allreduce_max_model(host_max.data(), T);
  check(cudaMemcpy(row_max, host_max.data(), bytes, cudaMemcpyHostToDevice), "softmax_xent_forward");
  launch(softmax_xent_sum_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "softmax_xent_sum_kernel", row_sum,
         target_logit, logits, row_max, targets, T, Vl, v0);
  ctx.sync();
  std::vector<float> host_sum = to_host(row_sum, T), host_target = to_host(target_logit, T);
  mesh.allreduce_sum_model(host_sum.data(), T);
  mesh.allreduce_sum_model(host_target.data(), T);
  std::vector<int32_t> host_targets(T);
  check(cudaMemcpy(host_targets.data(), targets, T * sizeof(int32_t), cudaMemcpyDeviceToHost), "targets");
  std::vector<float> host_lse(T);
  const cpu::LossSums sums = cpu::loss_sums(host_lse.data(), host_max.data(), host_sum.data(),
                                            host_target.data(), host_targets.data(), T);
  check(cudaMemcpy(lse, host_lse.data(), T * sizeof(float), cudaMemcpyHostToDevice), "lse");
  return sums;
}

void softmax_xent_backward(const Context& ctx, float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale) {
  if (T == 0) return;
  launch(softmax_xent_backward_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "softmax_xent_backward_kernel",
         dlogits, logits, lse, targets, T, Vl, v0, ce_scale, z_scale);
}

}  // namespace glam::cuda
