// The router's bookkeeping and backward on the GPU, from the decisions router.cu
// makes (choices, gates, capacity slots): the dispatched rows, the per-expert
// offsets and loads, the first-choice fractions, the aux loss and its gradient.
// Every sum runs in the CPU router's order (src/layers/cpu/router.cpp), one thread per
// sum, so the results are the CPU's for the same decisions and deterministic.
// What the host needs (offsets, loads, aux, drops) comes back in one copy.
#include "glam/layers/cuda/routing.h"
#include "launch.cuh"

namespace glam::cuda {

namespace {

constexpr int kThreads = 128;

// One thread per (group, expert): kept choices of the group on e, and the
// fraction of the group's first choices on e (summed as the CPU does: += 1/group_size).
__global__ void routing_bookkeeping_count_kernel(int32_t* count, int32_t* before, float* first_frac, float* mean_gate,
                                                 const int32_t* expert, const uint8_t* kept, const float* gates,
                                                 int64_t G, int64_t group_size, int64_t E) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < G * E; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t grp = i / E, e = i % E;
    int32_t n = 0, b = 0;
    float f = 0.0f, P = 0.0f;
    for (int64_t t = grp * group_size; t < (grp + 1) * group_size; t++) {
      if (expert[t * 2] == e) {
        f += 1.0f / static_cast<float>(group_size);
        b++;
        n += kept[t * 2];
      }
      if (expert[t * 2 + 1] == e) { b++; n += kept[t * 2 + 1]; }
      P += gates[t * E + e];
    }
    count[i] = n;
    before[i] = b;
    first_frac[i] = f;
    mean_gate[i] = P / static_cast<float>(group_size);
  }
}

// One thread: rows are expert-major, then group, then slot. summary = [offset[E+1],
// load_before[E], load_after[E], dropped] as int64, then aux as double.
__global__ void routing_bookkeeping_offsets_kernel(int64_t* start, int64_t* summary, const int32_t* count,
                                                   const int32_t* before, const float* first_frac,
                                                   const float* mean_gate, int64_t T, int64_t G, int64_t E,
                                                   int64_t n_groups_global, bool no_drop) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t* offset = summary;
  int64_t* load_before = summary + E + 1;
  int64_t* load_after = load_before + E;
  int64_t r = 0, kept = 0;
  for (int64_t e = 0; e < E; e++) {
    offset[e] = r;
    int64_t b = 0;
    for (int64_t grp = 0; grp < G; grp++) {
      start[grp * E + e] = r;
      r += count[grp * E + e];
      b += before[grp * E + e];
    }
    load_before[e] = b;
    load_after[e] = r - offset[e];
    kept += r - offset[e];
  }
  offset[E] = r;
  load_after[E] = 2 * T - kept;  // dropped
  // aux = E * sum_{g,e} f * P / G_global, P = mean gate of the group (CPU order)
  double sum = 0.0;
  for (int64_t i = 0; i < G * E; i++) sum += static_cast<double>(first_frac[i]) * mean_gate[i];
  double* aux = reinterpret_cast<double*>(load_after + E + 1);
  *aux = no_drop ? 0.0 : static_cast<double>(E) * sum / static_cast<double>(n_groups_global);
}

__global__ void routing_bookkeeping_rows_kernel(int32_t* row, const int64_t* start, const int32_t* expert,
                                                const uint8_t* kept, const int32_t* slot, int64_t T, int64_t group_size,
                                                int64_t E) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < 2 * T; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / 2;
    row[i] = kept[i] ? static_cast<int32_t>(start[(t / group_size) * E + expert[i]] + slot[i]) : -1;
  }
}

// One thread per token: cpu::router_backward's arithmetic, in its order.
__global__ void router_backward_kernel(float* dlogits, const float* dweight, const float* gates, const int32_t* expert,
                                       const uint8_t* kept, const float* first_frac, double aux_scale, int64_t T,
                                       int64_t group_size, int64_t E) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t grp = t / group_size;
    const int32_t i1 = expert[t * 2], i2 = expert[t * 2 + 1];
    const float* gt = gates + t * E;
    const float r1 = gt[i1], r2 = gt[i2];
    const float s = r1 + r2 + 1e-9f;
    const float dw1 = kept[t * 2] ? dweight[t * 2] : 0.0f;
    const float dw2 = kept[t * 2 + 1] ? dweight[t * 2 + 1] : 0.0f;
    const float d1 = (dw1 * (s - r1) - dw2 * r2) / (s * s);
    const float d2 = (dw2 * (s - r2) - dw1 * r1) / (s * s);
    auto dgate = [&](int64_t e) {
      float d = static_cast<float>(aux_scale * first_frac[grp * E + e]);
      if (e == i1) d += d1;
      if (e == i2) d += d2;
      return d;
    };
    float dot = 0.0f;
    for (int64_t e = 0; e < E; e++) dot += gt[e] * dgate(e);
    for (int64_t e = 0; e < E; e++) dlogits[t * E + e] += gt[e] * (dgate(e) - dot);
  }
}

// dispatch with an fp32 destination: expert_in[row[t, k]] = x[t] (bf16 -> fp32).
__global__ void dispatch_forward_f32_kernel(float* expert_in, const bf16* x, const int32_t* row, int64_t T, int64_t M) {
  for (int64_t i = blockIdx.x; i < 2 * T; i += gridDim.x) {
    const int32_t r = row[i];
    if (r < 0) continue;
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x) expert_in[r * M + c] = __bfloat162float(x[(i / 2) * M + c]);
  }
}

int blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

}  // namespace

int64_t routing_summary_bytes(int64_t E) { return (3 * E + 2) * static_cast<int64_t>(sizeof(int64_t)) + 8; }

void routing_bookkeeping(const Context& ctx, RoutingDevice& d, int64_t* host_summary, int64_t T, int64_t group_size,
                         int64_t E, int64_t n_groups_global, bool no_drop) {
  const int64_t G = T / group_size;
  launch(routing_bookkeeping_count_kernel, dim3(blocks(G * E)), dim3(kThreads), 0, ctx.stream(),
         "routing_bookkeeping_count_kernel", d.count, d.before, d.first_frac, d.mean_gate, d.expert, d.kept, d.gates, G,
         group_size, E);
  launch(routing_bookkeeping_offsets_kernel, dim3(1), dim3(1), 0, ctx.stream(), "routing_bookkeeping_offsets_kernel",
         d.start, d.summary, d.count, d.before, d.first_frac, d.mean_gate, T, G, E, n_groups_global, no_drop);
  launch(routing_bookkeeping_rows_kernel, dim3(blocks(2 * T)), dim3(kThreads), 0, ctx.stream(),
         "routing_bookkeeping_rows_kernel", d.row, d.start, d.expert, d.kept, d.slot, T, group_size, E);
  GLAM_CHECK_CUDA(cudaMemcpyAsync(host_summary, d.summary, routing_summary_bytes(E), cudaMemcpyDeviceToHost, ctx.stream()));
}

void router_backward(const Context& ctx, float* dlogits, const float* dweight, const RoutingDevice& d, double aux_grad,
                     int64_t T, int64_t group_size, int64_t E, int64_t n_groups_global) {
  const double aux_scale = aux_grad * static_cast<double>(E) / (static_cast<double>(group_size) * n_groups_global);
  launch(router_backward_kernel, dim3(blocks(T)), dim3(kThreads), 0, ctx.stream(), "router_backward_kernel", dlogits,
         dweight, d.gates, d.expert, d.kept, d.first_frac, aux_scale, T, group_size, E);
}

void dispatch_forward_f32(const Context& ctx, float* expert_in, const bf16* x, const int32_t* row, int64_t T,
                          int64_t M) {
  const int64_t b = 2 * T < 65535 ? 2 * T : 65535;
  launch(dispatch_forward_f32_kernel, dim3(static_cast<unsigned>(b)), dim3(128), 0, ctx.stream(),
         "dispatch_forward_f32_kernel", expert_in, x, row, T, M);
}

}  // namespace glam::cuda
