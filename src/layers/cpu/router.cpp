// Top-2 gating, GShard Algorithm 2 as GLaM's public code runs it:
//   gates = softmax(x Wg) in fp32; i1 = argmax, i2 = argmax with i1 masked;
//   g1, g2 renormalised to sum 1 BEFORE capacity;
//   per group of group_size tokens, in sequence order ALL first choices take slots before
//   ANY second choice; a choice whose expert already holds C tokens is dropped
//   (its weight becomes 0, the other weight is not renormalised again);
//   aux = E^2 * mean_{g,e}(f[g,e] * P[g,e]), f counted from first choices before capacity.
#include <algorithm>
#include <cmath>

#include "glam/base/check.h"
#include "glam/base/hash.h"
#include "glam/model/moe.h"

namespace glam::cpu {

namespace {

constexpr float kRenormEps = 1e-9f;

// Deterministic U[0,1) from (seed, token): output t of splitmix64 from `seed`
// (glam/base/hash.h; the CUDA router draws the same).
double uniform01(uint64_t seed, uint64_t t) { return unit_interval(splitmix64_at(seed, t)); }

void softmax_rows(float* out, const float* logits, int64_t T, int64_t E) {
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * E;
    float* o = out + t * E;
    float m = *std::max_element(l, l + E);
    float sum = 0.0f;
    for (int64_t e = 0; e < E; e++) { o[e] = std::exp(l[e] - m); sum += o[e]; }
    for (int64_t e = 0; e < E; e++) o[e] /= sum;
  }
}

void choose_top2(RoutingPlan& p, int64_t t) {
  const float* gt = p.gates.data() + t * p.E;
  int32_t i1 = static_cast<int32_t>(std::max_element(gt, gt + p.E) - gt);
  int32_t i2 = -1;
  for (int32_t e = 0; e < p.E; e++)
    if (e != i1 && (i2 < 0 || gt[e] > gt[i2])) i2 = e;
  p.expert[t * 2] = i1;
  p.expert[t * 2 + 1] = i2;
}

// Slots in one group [t0, t0+group_size): all first choices in order, then all second choices.
void assign_slots(RoutingPlan& p, int64_t t0, int64_t group_size, const RouterOptions& opt) {
  std::vector<int32_t> fill(p.E, 0);
  for (int k = 0; k < 2; k++)
    for (int64_t t = t0; t < t0 + group_size; t++) {
      int64_t i = t * 2 + k;
      int32_t e = p.expert[i];
      p.load_before[e]++;
      bool wanted = k == 0 || opt.second == SecondPolicy::all || opt.no_drop ||
                    2.0 * p.g[i] > uniform01(opt.seed, static_cast<uint64_t>(opt.token_offset + t));
      if (wanted && fill[e] < p.capacity) {
        p.slot[i] = fill[e]++;
        p.kept[i] = 1;
        p.load_after[e]++;
      } else {
        p.slot[i] = -1;
        p.kept[i] = 0;
        p.dropped++;
      }
    }
}

// Rows of the dispatched buffer: expert-major, then group, then slot.
void assign_rows(RoutingPlan& p) {
  const int64_t G = p.T / p.group_size;
  std::vector<int64_t> count(G * p.E, 0);  // [G, E] slots used
  for (int64_t t = 0; t < p.T; t++)
    for (int k = 0; k < 2; k++)
      if (p.kept[t * 2 + k]) count[(t / p.group_size) * p.E + p.expert[t * 2 + k]]++;
  std::vector<int64_t> start(G * p.E);  // [G, E] first row of (group, expert)
  int64_t r = 0;
  for (int64_t e = 0; e < p.E; e++) {
    p.expert_offset[e] = r;
    for (int64_t g = 0; g < G; g++) { start[g * p.E + e] = r; r += count[g * p.E + e]; }
  }
  p.expert_offset[p.E] = r;
  for (int64_t t = 0; t < p.T; t++)
    for (int k = 0; k < 2; k++) {
      int64_t i = t * 2 + k;
      p.row[i] = p.kept[i] ? static_cast<int32_t>(start[(t / p.group_size) * p.E + p.expert[i]] + p.slot[i])
                           : -1;
    }
}

void aux_statistics(RoutingPlan& p, bool no_drop) {
  const int64_t G = p.T / p.group_size, group_size = p.group_size, E = p.E;
  double sum = 0.0;
  for (int64_t g = 0; g < G; g++)
    for (int64_t e = 0; e < E; e++) {
      float P = 0.0f;
      for (int64_t t = g * group_size; t < (g + 1) * group_size; t++) P += p.gates[t * E + e];
      p.mean_gate[g * E + e] = P / group_size;
      sum += static_cast<double>(p.first_frac[g * E + e]) * p.mean_gate[g * E + e];
    }
  // E^2 * mean over (G_global * E) entries = E * sum / G_global; none at inference,
  // where groups are per rank and would make it depend on the mesh
  p.aux = no_drop ? 0.0 : static_cast<double>(E) * sum / static_cast<double>(p.n_groups_global);
}

}  // namespace

int64_t expert_capacity(int64_t group_size, double capacity_factor, int64_t n_experts) {
  // An expert receives at most group_size choices of a group (a token's two go to
  // two experts), so more slots change nothing: saturate there, before the cast
  // (a huge or infinite factor would overflow int64; NaN fails the comparison too).
  const double want = static_cast<double>(group_size) * capacity_factor / static_cast<double>(n_experts);
  int64_t c = group_size;
  if (want < static_cast<double>(group_size)) c = want >= 1.0 ? static_cast<int64_t>(want) : 1;
  return c > INT64_MAX - 3 ? c : (c + 3) / 4 * 4;
}

void router_forward(RoutingPlan& p, const float* logits, int64_t T, const RouterOptions& opt,
                    const RoutingPlan* frozen) {
  const int64_t E = opt.n_experts;
  const int64_t group_size = opt.no_drop ? T : opt.group_size;
  GLAM_REQUIRE(group_size > 0 && T % group_size == 0, "moe: ", T, " tokens do not split into groups of ", group_size,
               " (model.group_size must divide the tokens of each rank's batch)");
  GLAM_REQUIRE(E >= 2, "moe: top-2 gating needs model.n_experts >= 2, got ", E);
  const int64_t G = T / group_size;
  p.T = T;
  p.E = E;
  p.group_size = group_size;
  p.capacity = opt.no_drop ? group_size : expert_capacity(group_size, opt.capacity_factor, E);
  p.n_groups_global = opt.n_groups_global > 0 ? opt.n_groups_global : G;
  p.gates.resize(T * E);
  p.expert.resize(T * 2); p.g.resize(T * 2); p.kept.resize(T * 2);
  p.slot.resize(T * 2); p.row.resize(T * 2);
  p.expert_offset.assign(E + 1, 0);
  p.mean_gate.assign(G * E, 0.0f);
  p.load_before.assign(E, 0); p.load_after.assign(E, 0);
  p.dropped = 0;

  softmax_rows(p.gates.data(), logits, T, E);
  if (frozen) {
    p.expert = frozen->expert; p.kept = frozen->kept; p.slot = frozen->slot;
    p.first_frac = frozen->first_frac;
    p.load_before = frozen->load_before; p.load_after = frozen->load_after;
    p.dropped = frozen->dropped;
  } else {
    for (int64_t t = 0; t < T; t++) choose_top2(p, t);
  }
  for (int64_t t = 0; t < T; t++) {
    float g1 = p.gates[t * E + p.expert[t * 2]], g2 = p.gates[t * E + p.expert[t * 2 + 1]];
    float s = g1 + g2 + kRenormEps;
    p.g[t * 2] = g1 / s;
    p.g[t * 2 + 1] = g2 / s;
  }
  if (!frozen) {
    p.first_frac.assign(G * E, 0.0f);
    for (int64_t t = 0; t < T; t++) p.first_frac[(t / group_size) * E + p.expert[t * 2]] += 1.0f / group_size;
    for (int64_t g = 0; g < G; g++) assign_slots(p, g * group_size, group_size, opt);
  }
  assign_rows(p);
  aux_statistics(p, opt.no_drop);
}

void router_backward(float* dlogits, const float* dweight, double aux_grad, const RoutingPlan& p) {
  const int64_t E = p.E, group_size = p.group_size;
  const double aux_scale = aux_grad * static_cast<double>(E) / (static_cast<double>(group_size) * p.n_groups_global);
  std::vector<float> dgates(E);
  for (int64_t t = 0; t < p.T; t++) {
    const int64_t g = t / group_size;
    for (int64_t e = 0; e < E; e++)  // d aux / d gates[t,e] = E f[g,e] / (group_size G)
      dgates[e] = static_cast<float>(aux_scale * p.first_frac[g * E + e]);
    // w_k = kept_k * g_k / s, s = g1 + g2 + eps (raw gates)
    const int32_t i1 = p.expert[t * 2], i2 = p.expert[t * 2 + 1];
    const float r1 = p.gates[t * E + i1], r2 = p.gates[t * E + i2];
    const float s = r1 + r2 + kRenormEps;
    const float dw1 = p.kept[t * 2] ? dweight[t * 2] : 0.0f;
    const float dw2 = p.kept[t * 2 + 1] ? dweight[t * 2 + 1] : 0.0f;
    dgates[i1] += (dw1 * (s - r1) - dw2 * r2) / (s * s);
    dgates[i2] += (dw2 * (s - r2) - dw1 * r1) / (s * s);
    const float* gt = p.gates.data() + t * E;
    float dot = 0.0f;
    for (int64_t e = 0; e < E; e++) dot += gt[e] * dgates[e];
    for (int64_t e = 0; e < E; e++) dlogits[t * E + e] += gt[e] * (dgates[e] - dot);
  }
}

}  // namespace glam::cpu
