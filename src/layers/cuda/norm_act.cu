// RMSNorm (fp32 statistics), GEGLU and the expert activation on the GPU. Outputs
// that feed a GEMM are bf16; gradients are fp32 and accumulated.
#include "glam/layers/cuda/layers.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

__device__ float gelu(float x) {
  return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kGeluC * x * x * x)));
}

__device__ float gelu_grad(float x) {
  float th = tanhf(kSqrt2OverPi * (x + kGeluC * x * x * x));
  float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

// A block per row t, striding over the rows by the grid.
__global__ void rmsnorm_forward_kernel(bf16* out, float* out32, float* rstd, const float* x, const float* g,
                                       int64_t T, int64_t M) {
  __shared__ float shared[kThreads];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float* xt = x + t * M;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) ss += xt[i] * xt[i];
    ss = block_sum(ss, shared);
    const float r = rsqrtf(ss / M + cpu::kRmsEps);
    if (threadIdx.x == 0) rstd[t] = r;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
      const float y = xt[i] * r * g[i];
      out[t * M + i] = __float2bfloat16(y);
      if (out32) out32[t * M + i] = y;
    }
  }
}

// dx = r * (dout*g - xhat * mean(dout*g*xhat)), a block per row (grid-stride).
__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* g,
                                           const float* rstd, int64_t T, int64_t M) {
  __shared__ float shared[kThreads];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float r = rstd[t];
    const float* xt = x + t * M;
    const float* dt = dout + t * M;
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) dot += dt[i] * g[i] * xt[i] * r;
    dot = block_sum(dot, shared) / M;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x)
      dx[t * M + i] += r * (dt[i] * g[i] - xt[i] * r * dot);
  }
}

// dg[i] += sum_t dout[t,i] * x[t,i] * r[t]: one thread per column (grid-stride), rows in order.
__global__ void rmsnorm_backward_dg_kernel(float* dg, const float* dout, const float* x, const float* rstd,
                                           int64_t T, int64_t M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int64_t t = 0; t < T; t++) s += dout[t * M + i] * x[t * M + i] * rstd[t];
    dg[i] += s;
  }
}

__global__ void geglu_forward_kernel(bf16* h, const float* a0, const float* a1, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    h[i] = __float2bfloat16(gelu(a0[i]) * a1[i]);
}

__global__ void geglu_backward_kernel(float* da0, float* da1, const float* dh, const float* a0,
                                      const float* a1, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    da0[i] += dh[i] * a1[i] * gelu_grad(a0[i]);
    da1[i] += dh[i] * gelu(a0[i]);
  }
}

__global__ void act_forward_kernel(bf16* y, const float* x, int64_t n, bool relu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(relu ? fmaxf(x[i], 0.0f) : gelu(x[i]));
}

__global__ void act_backward_kernel(float* dx, const float* dy, const float* x, int64_t n, bool relu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] += relu ? (x[i] > 0.0f ? dy[i] : 0.0f) : dy[i] * gelu_grad(x[i]);
}

}  // namespace

void rmsnorm_forward(const Context& ctx, bf16* out, float* rstd, const float* x, const float* g,
                     int64_t T, int64_t M, float* out32) {
  if (T == 0) return;
  launch(rmsnorm_forward_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "rmsnorm_forward_kernel", out, out32,
         rstd, x, g, T, M);
}

void rmsnorm_backward(const Context& ctx, float* dx, float* dg, const float* dout, const float* x,
                      const float* g, const float* rstd, int64_t T, int64_t M) {
  if (T == 0) return;
  launch(rmsnorm_backward_dx_kernel, grid_for(T, 1), kThreads, 0, ctx.stream(), "rmsnorm_backward_dx_kernel", dx,
         dout, x, g, rstd, T, M);
  launch(rmsnorm_backward_dg_kernel, grid_for(M, kThreads), kThreads, 0, ctx.stream(), "rmsnorm_backward_dg_kernel",
         dg, dout, x, rstd, T, M);
}

void geglu_forward(const Context& ctx, bf16* h, const float* a0, const float* a1, int64_t n) {
  launch(geglu_forward_kernel, grid_for(n, kThreads), kThreads, 0, ctx.stream(), "geglu_forward_kernel", h, a0, a1,
         n);
}

void geglu_backward(const Context& ctx, float* da0, float* da1, const float* dh, const float* a0,
                    const float* a1, int64_t n) {
  launch(geglu_backward_kernel, grid_for(n, kThreads), kThreads, 0, ctx.stream(), "geglu_backward_kernel", da0, da1,
         dh, a0, a1, n);
}

void act_forward(const Context& ctx, bf16* y, const float* x, int64_t n, cpu::Act act) {
  launch(act_forward_kernel, grid_for(n, kThreads), kThreads, 0, ctx.stream(), "act_forward_kernel", y, x, n,
         act == cpu::Act::relu);
}

void act_backward(const Context& ctx, float* dx, const float* dy, const float* x, int64_t n,
                  cpu::Act act) {
  launch(act_backward_kernel, grid_for(n, kThreads), kThreads, 0, ctx.stream(), "act_backward_kernel", dx, dy, x, n,
         act == cpu::Act::relu);
}

}  // namespace glam::cuda
