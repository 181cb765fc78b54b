// GShard top-2 gating on the GPU with the CPU's exact decisions
// (src/layers/cpu/router.cpp): gates = softmax(logits) in fp32, first choice = the
// first maximum, second = the first maximum of the rest; per group, ALL first
// choices take capacity slots in sequence order before ANY second choice. One
// thread per (group, expert) scans its group in that order, so the slots are
// the CPU's and no atomics are needed.
//
// The decisions (choices, slots, keeps) are made here (router_decide); the rows of
// the dispatch buffer, the loads, the aux statistics and the router's backward
// follow on the device in routing.cu; dispatch and combine are the permutations.
#include <vector>

#include "glam/base/check.h"
#include "glam/base/hash.h"
#include "glam/layers/cuda/layers.h"
#include "glam/layers/cuda/routing.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

// Deterministic U[0,1) from (seed, token): the CPU router's draw (glam/base/hash.h).
__device__ double uniform01(uint64_t seed, uint64_t t) { return unit_interval(splitmix64_at(seed, t)); }

// One thread per token (grid-stride): softmax over E, top-2, renormalised g.
__global__ void router_decide_gates_kernel(float* gates, int32_t* expert, float* g, const float* logits, int64_t T,
                                           int64_t E) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T; t += int64_t(gridDim.x) * blockDim.x) {
    const float* l = logits + t * E;
    float* o = gates + t * E;
    float m = l[0];
    for (int64_t e = 1; e < E; e++) m = fmaxf(m, l[e]);
    float sum = 0.0f;
    for (int64_t e = 0; e < E; e++) { o[e] = expf(l[e] - m); sum += o[e]; }
    for (int64_t e = 0; e < E; e++) o[e] /= sum;
    int32_t i1 = 0;
    for (int32_t e = 1; e < E; e++) if (o[e] > o[i1]) i1 = e;
    int32_t i2 = -1;
    for (int32_t e = 0; e < E; e++) if (e != i1 && (i2 < 0 || o[e] > o[i2])) i2 = e;
    expert[t * 2] = i1;
    expert[t * 2 + 1] = i2;
    const float s = o[i1] + o[i2] + 1e-9f;
    g[t * 2] = o[i1] / s;
    g[t * 2 + 1] = o[i2] / s;
  }
}

// grid (G, E / threads rounded up): thread e of block (grp, .) fills expert e's slots.
__global__ void router_decide_slots_kernel(uint8_t* kept, int32_t* slot, const int32_t* expert, const float* g,
                                           int64_t group_size, int64_t E, int64_t capacity, bool second_all,
                                           uint64_t seed, int64_t token_offset) {
  const int64_t e = threadIdx.x + int64_t(blockIdx.y) * blockDim.x;
  if (e >= E) return;
  const int64_t t0 = blockIdx.x * group_size;
  int64_t fill = 0;
  for (int k = 0; k < 2; k++)
    for (int64_t t = t0; t < t0 + group_size; t++) {
      const int64_t i = t * 2 + k;
      if (expert[i] != e) continue;
      const bool wanted = k == 0 || second_all ||
                          2.0 * g[i] > uniform01(seed, static_cast<uint64_t>(token_offset + t));
      if (wanted && fill < capacity) {
        slot[i] = static_cast<int32_t>(fill++);
        kept[i] = 1;
      } else {
        slot[i] = -1;
        kept[i] = 0;
      }
    }
}

__global__ void dispatch_forward_kernel(bf16* expert_in, const bf16* x, const int32_t* row, int64_t n, int64_t M) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int32_t r = row[i];
    if (r < 0) continue;
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x) expert_in[r * M + c] = x[(i / 2) * M + c];
  }
}

// A block per token (grid-stride): dx[t] += its kept choices' rows, first choice first.
__global__ void dispatch_backward_kernel(float* dx, const float* dexpert_in, const int32_t* row, int64_t T,
                                         int64_t M) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x)
    for (int k = 0; k < 2; k++) {
      const int32_t r = row[t * 2 + k];
      if (r < 0) continue;
      for (int64_t c = threadIdx.x; c < M; c += blockDim.x) dx[t * M + c] += dexpert_in[r * M + c];
    }
}

// A block per token (grid-stride).
__global__ void combine_forward_kernel(float* out, const float* expert_out, const int32_t* row, const float* g,
                                       const uint8_t* kept, int64_t T, int64_t M) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x)
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x) {
      float o = 0.0f;
      for (int k = 0; k < 2; k++) {
        const int32_t r = row[t * 2 + k];
        if (r < 0) continue;
        o += (kept[t * 2 + k] ? g[t * 2 + k] : 0.0f) * expert_out[r * M + c];
      }
      out[t * M + c] = o;
    }
}

// A block per choice i (grid-stride): dexpert_out[row] = weight * dout[t], dweight[i] = dout[t] . expert_out[row].
__global__ void combine_backward_kernel(float* dexpert_out, float* dweight, const float* dout,
                                        const float* expert_out, const int32_t* row, const float* g,
                                        const uint8_t* kept, int64_t n, int64_t M) {
  __shared__ float red[256];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t t = i / 2;
    const int32_t r = row[i];
    if (r < 0) {  // the same for the whole block
      if (threadIdx.x == 0) dweight[i] = 0.0f;
      continue;
    }
    const float w = kept[i] ? g[i] : 0.0f;
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x) {
      dot += dout[t * M + c] * expert_out[r * M + c];
      dexpert_out[r * M + c] = w * dout[t * M + c];
    }
    dot = block_sum(dot, red);
    if (threadIdx.x == 0) dweight[i] = dot;
  }
}

}  // namespace

// The decisions only, into the device buffers of d (routing.h): the bookkeeping
// then runs on the device too (routing.cu).
void router_decide(const Context& ctx, RoutingDevice& d, const float* logits, int64_t T, const cpu::RouterOptions& opt) {
  const int64_t E = opt.n_experts;
  const int64_t group_size = opt.no_drop ? T : opt.group_size;
  GLAM_REQUIRE(group_size > 0 && T % group_size == 0, "moe: ", T, " tokens do not split into groups of ", group_size);
  const int64_t capacity = opt.no_drop ? group_size : cpu::expert_capacity(group_size, opt.capacity_factor, E);
  launch(router_decide_gates_kernel, grid_for(T, 128), 128, 0, ctx.stream(), "router_decide_gates_kernel", d.gates,
         d.expert, d.g, logits, T, E);
  const unsigned threads = static_cast<unsigned>(E < 256 ? E : 256);
  const dim3 grid(static_cast<unsigned>(T / group_size), static_cast<unsigned>((E + threads - 1) / threads));
  launch(router_decide_slots_kernel, grid, threads, 0, ctx.stream(), "router_decide_slots_kernel", d.kept, d.slot,
         d.expert, d.g, group_size, E, capacity, opt.second == cpu::SecondPolicy::all || opt.no_drop, opt.seed,
         opt.token_offset);
}

void dispatch_forward(const Context& ctx, bf16* expert_in, const bf16* x, const int32_t* row,
                      int64_t T, int64_t M) {
  if (T == 0) return;
  launch(dispatch_forward_kernel, grid_for(T * 2, 1), 128, 0, ctx.stream(), "dispatch_forward_kernel", expert_in, x,
         row, T * 2, M);
}

void dispatch_backward(const Context& ctx, float* dx, const float* dexpert_in, const int32_t* row,
                       int64_t T, int64_t M) {
  if (T == 0) return;
  launch(dispatch_backward_kernel, grid_for(T, 1), 128, 0, ctx.stream(), "dispatch_backward_kernel", dx, dexpert_in,
         row, T, M);
}

void combine_forward(const Context& ctx, float* out, const float* expert_out, const int32_t* row,
                     const float* g, const uint8_t* kept, int64_t T, int64_t M) {
  if (T == 0) return;
  launch(combine_forward_kernel, grid_for(T, 1), 128, 0, ctx.stream(), "combine_forward_kernel", out, expert_out, row,
         g, kept, T, M);
}

void combine_backward(const Context& ctx, float* dexpert_out, float* dweight, const float* dout,
                      const float* expert_out, const int32_t* row, const float* g,
                      const uint8_t* kept, int64_t T, int64_t M, int64_t rows) {
  if (T == 0) return;
  GLAM_CHECK_CUDA(cudaMemsetAsync(dexpert_out, 0, rows * M * sizeof(float), ctx.stream()));
  launch(combine_backward_kernel, grid_for(T * 2, 1), 256, 0, ctx.stream(), "combine_backward_kernel", dexpert_out,
         dweight, dout, expert_out, row, g, kept, T * 2, M);
}

}  // namespace glam::cuda
