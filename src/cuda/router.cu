// GShard top-2 gating on the GPU with the CPU's exact decisions
// (src/cpu/router.cpp): gates = softmax(logits) in fp32, first choice = the
// first maximum, second = the first maximum of the rest; per group, ALL first
// choices take capacity slots in sequence order before ANY second choice. One
// thread per (group, expert) scans its group in that order, so the slots are
// the CPU's and no atomics are needed.
//
// The decisions (choices, slots, keeps) are made here; the rows of the dispatch
// buffer, the loads and the aux statistics are then derived by the CPU router
// from those frozen decisions (one source of truth for that bookkeeping), and
// the rows go back to the device for dispatch and combine.
#include <vector>

#include "glam/check.h"
#include "glam/cuda/layers.h"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

// Deterministic U(0,1) from (seed, token): the CPU router's splitmix64.
__device__ double uniform01(uint64_t seed, uint64_t t) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (t + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

// One thread per token: softmax over E, top-2, renormalised g.
__global__ void gate_kernel(float* gates, int32_t* expert, float* g, const float* logits, int64_t T,
                            int64_t E) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= T) return;
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

// grid G, E threads (rounded up): thread e of block grp fills expert e's slots.
__global__ void slot_kernel(uint8_t* kept, int32_t* slot, const int32_t* expert, const float* g,
                            int64_t S, int64_t E, int64_t capacity, bool second_all, uint64_t seed,
                            int64_t token_offset) {
  const int64_t e = threadIdx.x + int64_t(blockIdx.y) * blockDim.x;
  if (e >= E) return;
  const int64_t t0 = blockIdx.x * S;
  int64_t fill = 0;
  for (int k = 0; k < 2; k++)
    for (int64_t t = t0; t < t0 + S; t++) {
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

// The frozen plan cpu::router_forward takes: choices, slots and the counts.
cpu::RoutingPlan decisions_of(std::vector<int32_t> expert, std::vector<uint8_t> kept,
                              std::vector<int32_t> slot, int64_t T, int64_t E, int64_t S) {
  cpu::RoutingPlan f;
  const int64_t G = T / S;
  f.first_frac.assign(G * E, 0.0f);
  f.load_before.assign(E, 0);
  f.load_after.assign(E, 0);
  for (int64_t t = 0; t < T; t++) f.first_frac[(t / S) * E + expert[t * 2]] += 1.0f / S;
  for (int k = 0; k < 2; k++)  // the CPU's counting order: first choices, then second
    for (int64_t t = 0; t < T; t++) {
      const int64_t i = t * 2 + k;
      f.load_before[expert[i]]++;
      if (kept[i]) f.load_after[expert[i]]++; else f.dropped++;
    }
  f.expert = std::move(expert);
  f.kept = std::move(kept);
  f.slot = std::move(slot);
  return f;
}

__global__ void dispatch_kernel(bf16* expert_in, const bf16* x, const int32_t* row, int64_t M) {
  const int64_t i = blockIdx.x;  // t * 2 + k
  const int32_t r = row[i];
  if (r < 0) return;
  for (int64_t c = threadIdx.x; c < M; c += blockDim.x) expert_in[r * M + c] = x[(i / 2) * M + c];
}

__global__ void undispatch_kernel(float* dx, const float* dexpert_in, const int32_t* row, int64_t M) {
  const int64_t t = blockIdx.x;
  for (int k = 0; k < 2; k++) {
    const int32_t r = row[t * 2 + k];
    if (r < 0) continue;
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x) dx[t * M + c] += dexpert_in[r * M + c];
  }
}

__global__ void combine_kernel(float* out, const float* expert_out, const int32_t* row, const float* g,
                               const uint8_t* kept, int64_t M) {
  const int64_t t = blockIdx.x;
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

__global__ void combine_backward_kernel(float* dexpert_out, float* dweight, const float* dout,
                                        const float* expert_out, const int32_t* row, const float* g,
                                        const uint8_t* kept, int64_t M) {
  __shared__ float red[256];
  const int64_t i = blockIdx.x, t = i / 2;
  const int32_t r = row[i];
  if (r < 0) {
    if (threadIdx.x == 0) dweight[i] = 0.0f;
    return;
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

}  // namespace

void router_forward(const Context& ctx, cpu::RoutingPlan& plan, DeviceRouting& dev,
                    const float* logits, int64_t T, const cpu::RouterOptions& opt) {
  const int64_t E = opt.n_experts;
  const int64_t S = opt.no_drop ? T : opt.group_size;
  GLAM_REQUIRE(S > 0 && T % S == 0, "moe: ", T, " tokens do not split into groups of ", S);
  const int64_t capacity = opt.no_drop ? S : cpu::expert_capacity(S, opt.capacity_factor, E);
  dev.gates.resize(T * E);
  dev.expert.resize(T * 2);
  dev.g.resize(T * 2);
  dev.kept.resize(T * 2);
  dev.slot.resize(T * 2);
  gate_kernel<<<grid_for(T, 128), 128, 0, ctx.stream()>>>(dev.gates.data(), dev.expert.data(),
                                                          dev.g.data(), logits, T, E);
  const unsigned threads = static_cast<unsigned>(E < 256 ? E : 256);
  const dim3 grid(static_cast<unsigned>(T / S), static_cast<unsigned>((E + threads - 1) / threads));
  slot_kernel<<<grid, threads, 0, ctx.stream()>>>(
      dev.kept.data(), dev.slot.data(), dev.expert.data(), dev.g.data(), S, E, capacity,
      opt.second == cpu::SecondPolicy::all || opt.no_drop, opt.seed, opt.token_offset);
  check(cudaGetLastError(), "router_forward");
  ctx.sync();
  const cpu::RoutingPlan frozen =
      decisions_of(dev.expert.download(), dev.kept.download(), dev.slot.download(), T, E, S);
  std::vector<float> host_logits(T * E);
  check(cudaMemcpy(host_logits.data(), logits, T * E * sizeof(float), cudaMemcpyDeviceToHost), "logits");
  cpu::router_forward(plan, host_logits.data(), T, opt, &frozen);
  dev.row.upload(plan.row);
}

void dispatch_forward(const Context& ctx, bf16* expert_in, const bf16* x, const int32_t* row,
                      int64_t T, int64_t M) {
  if (T == 0) return;
  dispatch_kernel<<<T * 2, 128, 0, ctx.stream()>>>(expert_in, x, row, M);
  check(cudaGetLastError(), "dispatch_forward");
}

void dispatch_backward(const Context& ctx, float* dx, const float* dexpert_in, const int32_t* row,
                       int64_t T, int64_t M) {
  if (T == 0) return;
  undispatch_kernel<<<T, 128, 0, ctx.stream()>>>(dx, dexpert_in, row, M);
  check(cudaGetLastError(), "dispatch_backward");
}

void combine_forward(const Context& ctx, float* out, const float* expert_out, const int32_t* row,
                     const float* g, const uint8_t* kept, int64_t T, int64_t M) {
  if (T == 0) return;
  combine_kernel<<<T, 128, 0, ctx.stream()>>>(out, expert_out, row, g, kept, M);
  check(cudaGetLastError(), "combine_forward");
}

void combine_backward(const Context& ctx, float* dexpert_out, float* dweight, const float* dout,
                      const float* expert_out, const int32_t* row, const float* g,
                      const uint8_t* kept, int64_t T, int64_t M, int64_t rows) {
  if (T == 0) return;
  check(cudaMemsetAsync(dexpert_out, 0, rows * M * sizeof(float), ctx.stream()), "combine_backward");
  combine_backward_kernel<<<T * 2, 256, 0, ctx.stream()>>>(dexpert_out, dweight, dout, expert_out,
                                                           row, g, kept, M);
  check(cudaGetLastError(), "combine_backward");
}

}  // namespace glam::cuda
