// The MoE layer in three parts with narrow contracts (Megatron-Core style):
//   router     (router.cpp):   gate probabilities, top-2 choices, capacity slots, aux loss
//   dispatcher (dispatch.cpp): gather tokens into per-expert rows and scatter them back
//   experts    (experts.cpp):  act(x Wi_e) Wo_e on each expert's rows
// moe_forward reads route -> dispatch -> experts -> combine (model.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

enum class SecondPolicy { all, random };

struct RouterOptions {
  int64_t n_experts = 8;        // E
  int64_t group_size = 512;     // tokens per routing group, fixed in tokens
  double capacity_factor = 2.0;
  SecondPolicy second = SecondPolicy::all;
  bool no_drop = false;         // inference: one group, capacity = group size, every choice
                                // routed (both policies), no aux loss
  int64_t n_groups_global = 0;  // groups in the global batch (aux is their mean); 0 = local
  uint64_t seed = 0;            // for SecondPolicy::random: U(0,1) from (seed, global token)
  int64_t token_offset = 0;     // global index of this rank's first token (mesh-independent draws)
};

// C = int(group_size * capacity_factor / E), at most group_size, rounded up to a multiple of 4 (at least 4).
int64_t expert_capacity(int64_t group_size, double capacity_factor, int64_t n_experts);

// Everything the router decided for T tokens, and what its backward needs.
struct RoutingPlan {
  int64_t T = 0, E = 0, group_size = 0, capacity = 0, n_groups_global = 0;
  std::vector<float> gates;       // [T, E] softmax(x Wg), fp32
  std::vector<int32_t> expert;    // [T, 2] first and second choice
  std::vector<float> g;           // [T, 2] g1, g2 renormalised: g_k / (g1 + g2 + 1e-9)
  std::vector<uint8_t> kept;      // [T, 2] 1 if the choice got a capacity slot
  std::vector<int32_t> slot;      // [T, 2] its position in the expert's buffer of the group, -1 if dropped
  std::vector<int32_t> row;       // [T, 2] its row in the dispatched buffer, -1 if dropped
  std::vector<int64_t> expert_offset;  // [E + 1] rows of expert e: [offset[e], offset[e+1])
  std::vector<float> first_frac; // [G, E] f: fraction of the group's first choices on e (before capacity)
  std::vector<float> mean_gate;  // [G, E] P: mean gate probability of e over the group
  double aux = 0.0;              // this rank's share of E^2 * mean_{g,e}(f * P)
  std::vector<int64_t> load_before;  // [E] choices sent to e before capacity
  std::vector<int64_t> load_after;   // [E] choices that got a slot
  int64_t dropped = 0;           // choices dropped for capacity (or by the random policy)

  float weight(int64_t t, int k) const { return kept[t * 2 + k] ? g[t * 2 + k] : 0.0f; }
};

// logits [T, E] = x Wg (computed by the caller). With `frozen`, the choices, slots
// and first-choice fractions are copied from it and only the gate values are
// recomputed: that holds the discrete top-2 decision fixed for finite differences.
void router_forward(RoutingPlan& plan, const float* logits, int64_t T, const RouterOptions& opt,
                    const RoutingPlan* frozen = nullptr);
// dweight [T, 2]: gradient w.r.t. each choice's combine weight; aux_grad: dLoss/daux.
// Accumulates into dlogits [T, E].
void router_backward(float* dlogits, const float* dweight, double aux_grad, const RoutingPlan& plan);

// expert_in [rows, M]: token t's copy for choice k at row plan.row[t,k].
void dispatch_forward(float* expert_in, const float* x, const RoutingPlan& plan, int64_t M);
void dispatch_backward(float* dx, const float* dexpert_in, const RoutingPlan& plan, int64_t M);
// out [T, M] = sum_k weight[t,k] * expert_out[row[t,k]]
void combine_forward(float* out, const float* expert_out, const RoutingPlan& plan, int64_t M);
// dexpert_out [rows, M] (overwritten), dweight [T, 2] (overwritten)
void combine_backward(float* dexpert_out, float* dweight, const float* dout, const float* expert_out,
                      const RoutingPlan& plan, int64_t M);

// Experts on their rows: pre [rows, H] = x Wi_e, h = act(pre), y [rows, M] = h Wo_e.
// wi [E, M, H], wo [E, H, M]; offsets [E + 1] from the plan.
void experts_forward(float* y, float* pre, float* h, const float* x, const float* wi,
                     const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                     Act act, Precision p = Precision::fp32);
void experts_backward(float* dx, float* dwi, float* dwo, float* dh_scratch, const float* dy,
                      const float* x, const float* pre, const float* h, const float* wi,
                      const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                      Act act, Precision p = Precision::fp32);

}  // namespace glam::cpu
