// The router's bookkeeping and backward on the GPU (src/layers/cuda/routing.cu), after
// router.cu's decisions: everything cpu::router_forward derives from the choices,
// and cpu::router_backward, in the CPU's summation order.
#pragma once
#include <cstdint>

#include "glam/layers/cuda/layers.h"

namespace glam::cuda {

// Device buffers of one MoE layer's routing for T tokens in G = T / group_size groups.
struct RoutingDevice {
  float* gates = nullptr;       // [T, E] softmax of the router logits
  int32_t* expert = nullptr;    // [T, 2] first and second choice
  float* g = nullptr;           // [T, 2] renormalised gates
  uint8_t* kept = nullptr;      // [T, 2]
  int32_t* slot = nullptr;      // [T, 2] -1 if dropped
  int32_t* row = nullptr;       // [T, 2] row in the dispatched buffer, -1 if dropped (written here)
  float* first_frac = nullptr;  // [G, E] written here
  // scratch for one call
  float* mean_gate = nullptr;   // [G, E]
  int32_t* count = nullptr;     // [G, E] kept choices of (group, expert)
  int32_t* before = nullptr;    // [G, E] choices of (group, expert) before capacity
  int64_t* start = nullptr;     // [G, E] first row of (group, expert)
  int64_t* summary = nullptr;   // routing_summary_bytes(E)
};

// router.cu: softmax, top-2, renormalised gates and capacity slots of T tokens
// (logits [T, E] fp32) into gates, expert, g, kept and slot.
void router_decide(const Context& ctx, RoutingDevice& d, const float* logits, int64_t T, const cpu::RouterOptions& opt);

// Bytes of the summary the host receives: offset [E+1], load_before [E],
// load_after [E], dropped (int64), then aux (double).
int64_t routing_summary_bytes(int64_t E);

// Fills row, first_frac and the summary, and queues the summary's copy into
// host_summary (pinned; valid after the stream is synchronised).
void routing_bookkeeping(const Context& ctx, RoutingDevice& d, int64_t* host_summary, int64_t T, int64_t group_size,
                         int64_t E, int64_t n_groups_global, bool no_drop);

// dlogits [T, E] += d loss / d logits through the combine weights (dweight [T, 2])
// and the aux loss (aux_grad = its weight in the loss).
void router_backward(const Context& ctx, float* dlogits, const float* dweight, const RoutingDevice& d, double aux_grad,
                     int64_t T, int64_t group_size, int64_t E, int64_t n_groups_global);

// expert_in [rows, M] fp32: row[t, k] <- x[t] (bf16), dropped choices skipped.
void dispatch_forward_f32(const Context& ctx, float* expert_in, const bf16* x, const int32_t* row, int64_t T,
                          int64_t M);

}  // namespace glam::cuda
