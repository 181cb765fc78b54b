// Top-2 gating (the GLaM paper, Du et al. 2022) on hand-built router logits, where the order
// of the softmax is obvious by construction:
//   capacity C = int(S*cf/E) rounded up to a multiple of 4 (at least 4);
//   top-2 choice, g1, g2 renormalised by g1+g2+1e-9 BEFORE capacity;
//   in a group, ALL first choices take slots in sequence order before ANY second choice;
//   dropped choices get weight 0 (the other weight is not renormalised), a token with
//   both choices dropped contributes nothing to the combine;
//   aux = E^2 mean(f*P) (1 when uniform, E when collapsed); groups are independent;
//   rows of the dispatched buffer are expert-major, then group, then slot;
//   the GShard 'random' second policy; no_drop; router_backward against finite
//   differences with the discrete decisions frozen.
// Expected plans are worked out by hand in the comments of each case.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "glam/model/moe.h"

using namespace glam::cpu;

namespace {

constexpr float kHi = 3.0f, kMid = 2.0f;  // logits of the first and second choice; others 0
// With logits (3, 2, 0, ...): g1 = e^3/(e^3+e^2) = sigmoid(1), g2 = 1 - g1 (whatever E is).
constexpr double kG1 = 0.7310585786300049, kG2 = 0.2689414213699951;

// logits [T, E] from a list of (first, second) choices, one per token.
std::vector<float> choice_logits(const std::vector<std::pair<int, int>>& choices, int64_t E) {
  std::vector<float> l(choices.size() * E, 0.0f);
  for (size_t t = 0; t < choices.size(); t++) {
    l[t * E + choices[t].first] = kHi;
    l[t * E + choices[t].second] = kMid;
  }
  return l;
}

RouterOptions options(int64_t E, int64_t S, double cf) {
  RouterOptions o;
  o.n_experts = E;
  o.group_size = S;
  o.capacity_factor = cf;
  return o;
}

std::vector<double> softmax(const float* l, int64_t E) {
  double m = l[0];
  for (int64_t e = 1; e < E; e++) m = std::max(m, double(l[e]));
  std::vector<double> p(E);
  double s = 0.0;
  for (int64_t e = 0; e < E; e++) s += p[e] = std::exp(l[e] - m);
  for (auto& x : p) x /= s;
  return p;
}

// Plan fields per token as (first, second) pairs, for readable comparisons.
std::vector<std::pair<int, int>> pairs(const std::vector<int32_t>& v) {
  std::vector<std::pair<int, int>> out;
  for (size_t i = 0; i + 1 < v.size(); i += 2) out.emplace_back(v[i], v[i + 1]);
  return out;
}
std::vector<std::pair<int, int>> pairs(const std::vector<uint8_t>& v) {
  std::vector<std::pair<int, int>> out;
  for (size_t i = 0; i + 1 < v.size(); i += 2) out.emplace_back(v[i], v[i + 1]);
  return out;
}

// An independent reference of the discrete routing decisions (policy 'all'):
// per group, pass 1 places first choices, pass 2 second choices, in token order.
struct RefRouting {
  std::vector<int> expert, slot;  // [T, 2]
  std::vector<double> g;          // [T, 2]
  double aux = 0.0;
};
RefRouting ref_route(const std::vector<float>& logits, int64_t T, int64_t E, int64_t S, int64_t C) {
  RefRouting r;
  r.expert.assign(T * 2, -1);
  r.slot.assign(T * 2, -1);
  r.g.assign(T * 2, 0.0);
  std::vector<std::vector<double>> p(T);
  for (int64_t t = 0; t < T; t++) {
    p[t] = softmax(&logits[t * E], E);
    std::vector<int> order(E);
    for (int e = 0; e < E; e++) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[t][a] > p[t][b]; });
    r.expert[t * 2] = order[0];
    r.expert[t * 2 + 1] = order[1];
    const double s = p[t][order[0]] + p[t][order[1]] + 1e-9;
    r.g[t * 2] = p[t][order[0]] / s;
    r.g[t * 2 + 1] = p[t][order[1]] / s;
  }
  double fp_sum = 0.0;
  for (int64_t g0 = 0; g0 < T; g0 += S) {
    std::vector<int> used(E, 0);
    for (int k = 0; k < 2; k++)
      for (int64_t t = g0; t < g0 + S; t++) {
        int e = r.expert[t * 2 + k];
        if (used[e] < C) r.slot[t * 2 + k] = used[e]++;
      }
    for (int64_t e = 0; e < E; e++) {
      double f = 0.0, P = 0.0;
      for (int64_t t = g0; t < g0 + S; t++) {
        f += r.expert[t * 2] == e ? 1.0 / S : 0.0;
        P += p[t][e] / S;
      }
      fp_sum += f * P;
    }
  }
  r.aux = double(E) * E * fp_sum / (double(T / S) * E);
  return r;
}

}  // namespace

TEST_CASE("expert_capacity: int(S*cf/E) rounded up to a multiple of 4, at least 4") {
  struct Case { int64_t S; double cf; int64_t E; int64_t C; };
  const std::vector<Case> cases = {
      {512, 2.0, 8, 128},   // GLaM-tiny: 128 exactly
      {1024, 2.0, 64, 32},  // GLaM 64B/64E
      {100, 2.0, 8, 28},    // 25 -> 28
      {18, 1.0, 2, 12},     // 9 -> 12
      {17, 1.0, 2, 8},      // int(8.5) = 8 stays 8
      {30, 2.0, 4, 16},     // 15 -> 16
      {1024, 1.25, 64, 20}, // 20 stays 20
      {10, 2.0, 8, 4},      // 2 -> 4
      {8, 1.0, 8, 4},       // 1 -> 4
      {4, 0.5, 8, 4},       // int(0.25) = 0 -> the minimum 4
  };
  for (const Case& c : cases) {
    INFO("S=" << c.S << " cf=" << c.cf << " E=" << c.E);
    CHECK(expert_capacity(c.S, c.cf, c.E) == c.C);
  }
}

TEST_CASE("router: top-2 choice and renormalisation before capacity") {
  const int64_t E = 5;
  // Hand-built: the choices are the two largest logits.
  const std::vector<std::pair<int, int>> choices = {{0, 1}, {4, 2}, {3, 0}, {1, 4}, {2, 3}};
  std::vector<float> logits = choice_logits(choices, E);
  // A sixth token with a spread of logits: order 2 > 4 > 0 > 3 > 1.
  for (float v : {0.5f, -1.0f, 2.0f, 0.1f, 1.2f}) logits.push_back(v);
  const int64_t T = 6;
  RoutingPlan plan;
  router_forward(plan, logits.data(), T, options(E, T, 10.0));
  std::vector<std::pair<int, int>> want = choices;
  want.emplace_back(2, 4);
  CHECK(pairs(plan.expert) == want);

  double worst = 0.0;
  for (int64_t t = 0; t < T; t++) {
    const auto p = softmax(&logits[t * E], E);
    for (int64_t e = 0; e < E; e++) worst = std::max(worst, std::abs(plan.gates[t * E + e] - p[e]));
    const double p1 = p[want[t].first], p2 = p[want[t].second];
    const double g1 = p1 / (p1 + p2 + 1e-9), g2 = p2 / (p1 + p2 + 1e-9);
    worst = std::max({worst, std::abs(plan.g[t * 2] - g1), std::abs(plan.g[t * 2 + 1] - g2)});
    if (t < 5) {  // logits (3, 2, 0, 0, 0): g1 = sigmoid(1) regardless of the other gates
      CHECK(plan.g[t * 2] == Approx(kG1).margin(1e-6));
      CHECK(plan.g[t * 2 + 1] == Approx(kG2).margin(1e-6));
    }
  }
  std::printf("  router gates and renormalised g: worst abs err %.2e (tol 1e-6)\n", worst);
  CHECK(worst <= 1e-6);
  CHECK(plan.dropped == 0);  // capacity 20 > 6 tokens
}

TEST_CASE("router: all first choices take slots before any second choice") {
  // E = 4, S = 8, cf = 1: C = int(8/4) = 2 -> 4.
  // Token 0's SECOND choice (expert 0) comes earlier in the sequence than tokens 1..4,
  // whose FIRST choices are expert 0: they take all 4 slots (token 4 the last one), so
  // token 0's second choice is dropped. Worked out by hand:
  //   pass 1 (first choices):  t0->e1 s0, t1..t4->e0 s0..s3, t5->e2 s0, t6->e3 s0, t7->e1 s1
  //   pass 2 (second choices): t0->e0 DROP, t1->e2 s1, t2->e3 s1, t3->e2 s2, t4->e3 s2,
  //                            t5->e1 s2, t6->e0 DROP, t7->e2 s3
  const int64_t E = 4, S = 8;
  const std::vector<std::pair<int, int>> choices = {{1, 0}, {0, 2}, {0, 3}, {0, 2},
                                                    {0, 3}, {2, 1}, {3, 0}, {1, 2}};
  const auto logits = choice_logits(choices, E);
  RoutingPlan plan;
  router_forward(plan, logits.data(), S, options(E, S, 1.0));
  REQUIRE(plan.capacity == 4);
  CHECK(pairs(plan.expert) == choices);
  const std::vector<std::pair<int, int>> slots = {{0, -1}, {0, 1}, {1, 1}, {2, 2},
                                                  {3, 2},  {0, 2}, {0, -1}, {1, 3}};
  CHECK(pairs(plan.slot) == slots);
  const std::vector<std::pair<int, int>> kept = {{1, 0}, {1, 1}, {1, 1}, {1, 1},
                                                 {1, 1}, {1, 1}, {1, 0}, {1, 1}};
  CHECK(pairs(plan.kept) == kept);
  CHECK(plan.dropped == 2);
  CHECK(plan.load_before == std::vector<int64_t>{6, 3, 4, 3});
  CHECK(plan.load_after == std::vector<int64_t>{4, 3, 4, 3});
  // Token 0 keeps its renormalised first weight; it is NOT renormalised to 1.
  CHECK(plan.weight(0, 0) == Approx(kG1).margin(1e-6));
  CHECK(plan.weight(0, 1) == 0.0f);
  CHECK(plan.row[0 * 2 + 1] == -1);
  CHECK(plan.row[6 * 2 + 1] == -1);
  CHECK(plan.weight(6, 0) == Approx(kG1).margin(1e-6));
}

TEST_CASE("router: dropping beyond capacity, a token with both choices dropped, combine") {
  // E = 4, S = 12, cf = 1: C = int(3) -> 4. Hand-worked plan:
  //   pass 1: t0..t3 -> e0 s0..s3; t4..t7 -> e1 s0..s3; t8 -> e0 DROP;
  //           t9 -> e2 s0; t10 -> e3 s0; t11 -> e2 s1
  //   pass 2: t0 -> e2 s2; t1 -> e2 s3; t2, t3 -> e2 DROP; t4..t6 -> e3 s1..s3; t7 -> e3 DROP;
  //           t8 -> e1 DROP (both of t8's choices dropped); t9 -> e3 DROP; t10 -> e2 DROP;
  //           t11 -> e3 DROP
  const int64_t E = 4, S = 12, M = 3;
  const std::vector<std::pair<int, int>> choices = {{0, 2}, {0, 2}, {0, 2}, {0, 2}, {1, 3}, {1, 3},
                                                    {1, 3}, {1, 3}, {0, 1}, {2, 3}, {3, 2}, {2, 3}};
  const auto logits = choice_logits(choices, E);
  RoutingPlan plan;
  router_forward(plan, logits.data(), S, options(E, S, 1.0));
  REQUIRE(plan.capacity == 4);
  const std::vector<std::pair<int, int>> slots = {{0, 2},   {1, 3},  {2, -1}, {3, -1},
                                                  {0, 1},   {1, 2},  {2, 3},  {3, -1},
                                                  {-1, -1}, {0, -1}, {0, -1}, {1, -1}};
  CHECK(pairs(plan.slot) == slots);
  CHECK(plan.dropped == 8);
  CHECK(plan.load_before == std::vector<int64_t>{5, 5, 7, 7});
  CHECK(plan.load_after == std::vector<int64_t>{4, 4, 4, 4});
  for (int64_t t = 0; t < S; t++)
    for (int k = 0; k < 2; k++) {
      INFO("token " << t << " choice " << k);
      const bool kept = (k == 0 ? slots[t].first : slots[t].second) >= 0;
      CHECK(int(plan.kept[t * 2 + k]) == int(kept));
      CHECK((plan.row[t * 2 + k] >= 0) == kept);
      // a kept choice has its renormalised gate; a dropped one 0, the other untouched
      CHECK(plan.weight(t, k) == Approx(kept ? (k == 0 ? kG1 : kG2) : 0.0).margin(1e-6));
    }

  // Combine: expert outputs are all nonzero, so only a fully dropped token gets exactly 0.
  const int64_t rows = plan.expert_offset[E];
  REQUIRE(rows == 16);
  std::vector<float> expert_out(rows * M), out(S * M, -7.0f);
  for (int64_t i = 0; i < rows * M; i++) expert_out[i] = 1.0f + 0.25f * static_cast<float>(i);
  combine_forward(out.data(), expert_out.data(), plan, M);
  double worst = 0.0;
  for (int64_t t = 0; t < S; t++)
    for (int64_t m = 0; m < M; m++) {
      double want = 0.0;
      for (int k = 0; k < 2; k++)
        if (plan.row[t * 2 + k] >= 0) want += plan.weight(t, k) * expert_out[plan.row[t * 2 + k] * M + m];
      worst = std::max(worst, std::abs(out[t * M + m] - want));
    }
  std::printf("  combine_forward: worst abs err %.2e (tol 1e-5)\n", worst);
  CHECK(worst <= 1e-5);
  for (int64_t m = 0; m < M; m++) CHECK(out[8 * M + m] == 0.0f);  // both choices of token 8 dropped
  for (int64_t m = 0; m < M; m++) CHECK(out[2 * M + m] != 0.0f);
}

TEST_CASE("router: groups are independent; rows are expert-major, then group, then slot") {
  // Two groups of 8 with the SAME logits (the first-before-second case): if capacity
  // were counted over both groups, group 1 would find expert 0 full.
  const int64_t E = 4, S = 8, T = 16;
  const std::vector<std::pair<int, int>> group = {{1, 0}, {0, 2}, {0, 3}, {0, 2},
                                                  {0, 3}, {2, 1}, {3, 0}, {1, 2}};
  auto logits = choice_logits(group, E);
  logits.insert(logits.end(), logits.begin(), logits.end());
  RoutingPlan plan;
  router_forward(plan, logits.data(), T, options(E, S, 1.0));
  for (int64_t t = 0; t < S; t++)
    for (int k = 0; k < 2; k++) {
      INFO("token " << t << " choice " << k);
      CHECK(plan.slot[(t + S) * 2 + k] == plan.slot[t * 2 + k]);
      CHECK(plan.kept[(t + S) * 2 + k] == plan.kept[t * 2 + k]);
    }
  CHECK(plan.dropped == 4);
  CHECK(plan.load_after == std::vector<int64_t>{8, 6, 8, 6});
  // Per group the kept slots are e0: 4, e1: 3, e2: 4, e3: 3.
  CHECK(plan.expert_offset == std::vector<int64_t>{0, 8, 14, 22, 28});
  const int per_group[4] = {4, 3, 4, 3};
  std::vector<int> used(28, 0);
  for (int64_t t = 0; t < T; t++)
    for (int k = 0; k < 2; k++) {
      const int64_t i = t * 2 + k;
      if (!plan.kept[i]) continue;
      const int e = plan.expert[i];
      const int64_t want = plan.expert_offset[e] + (t / S) * per_group[e] + plan.slot[i];
      INFO("token " << t << " choice " << k);
      CHECK(plan.row[i] == want);
      REQUIRE(plan.row[i] >= 0);
      REQUIRE(plan.row[i] < 28);
      used[plan.row[i]]++;
    }
  CHECK(std::all_of(used.begin(), used.end(), [](int u) { return u == 1; }));
  // Literal spot checks: t1 (e0 s0, group 0) row 0; t9 (same in group 1) row 0 + 4;
  // t0 (e1 s0) row 8; t8 (e1 s0, group 1) row 8 + 3; t7's second (e2 s3) row 14 + 3.
  CHECK(plan.row[1 * 2] == 0);
  CHECK(plan.row[9 * 2] == 4);
  CHECK(plan.row[0 * 2] == 8);
  CHECK(plan.row[8 * 2] == 11);
  CHECK(plan.row[7 * 2 + 1] == 17);
  CHECK(plan.row[15 * 2 + 1] == 21);
}

TEST_CASE("router: plan matches an independent reference on random logits") {
  const int64_t E = 8, S = 16, T = 64;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.5f);
  std::vector<float> logits(T * E);
  for (auto& x : logits) x = dist(rng);
  for (int64_t t = 0; t < T; t++) logits[t * E + 3] += 1.0f;  // a popular expert: drops happen
  RoutingPlan plan;
  router_forward(plan, logits.data(), T, options(E, S, 1.0));
  const RefRouting ref = ref_route(logits, T, E, S, plan.capacity);
  REQUIRE(plan.capacity == 4);
  CHECK(plan.expert == std::vector<int32_t>(ref.expert.begin(), ref.expert.end()));
  CHECK(plan.slot == std::vector<int32_t>(ref.slot.begin(), ref.slot.end()));
  double worst = 0.0;
  for (int64_t i = 0; i < T * 2; i++) worst = std::max(worst, std::abs(plan.g[i] - ref.g[i]));
  const double aux_err = std::abs(plan.aux - ref.aux) / ref.aux;
  std::printf("  router vs reference: %lld dropped, worst g err %.2e (tol 1e-6), aux rel err %.2e (tol 1e-5)\n",
              static_cast<long long>(plan.dropped), worst, aux_err);
  CHECK(plan.dropped > 0);
  CHECK(worst <= 1e-6);
  CHECK(aux_err <= 1e-5);
}

TEST_CASE("router: aux loss is 1 for uniform routing and E for collapsed routing") {
  const int64_t E = 4, S = 8;
  SECTION("uniform: token t's logits are (2, 1, 0.5, 0) rotated by t, so f = P = 1/4") {
    std::vector<float> logits(S * E);
    const float base[4] = {2.0f, 1.0f, 0.5f, 0.0f};
    for (int64_t t = 0; t < S; t++)
      for (int64_t e = 0; e < E; e++) logits[t * E + (e + t) % E] = base[e];
    RoutingPlan plan;
    router_forward(plan, logits.data(), S, options(E, S, 2.0));
    for (int64_t e = 0; e < E; e++) {
      CHECK(plan.first_frac[e] == Approx(0.25).margin(1e-7));
      CHECK(plan.mean_gate[e] == Approx(0.25).margin(1e-6));
    }
    std::printf("  aux uniform: %.8f, expected 1 (tol 1e-6)\n", plan.aux);
    CHECK(plan.aux == Approx(1.0).margin(1e-6));
  }
  SECTION("collapsed: every token prefers expert 0 with p = e^10/(e^10+3)") {
    std::vector<float> logits(S * E, 0.0f);
    for (int64_t t = 0; t < S; t++) logits[t * E] = 10.0f;
    RoutingPlan plan;
    router_forward(plan, logits.data(), S, options(E, S, 2.0));
    const double p0 = std::exp(10.0) / (std::exp(10.0) + 3.0);
    const double want = E * p0;  // E^2 * mean_e(f P) = E^2 * (1 * p0) / E
    std::printf("  aux collapsed: %.8f, expected %.8f (tol 1e-6 rel)\n", plan.aux, want);
    CHECK(plan.aux == Approx(want).epsilon(1e-6));
    CHECK(plan.aux > 3.99);
  }
  SECTION("aux is this rank's share when n_groups_global counts other ranks' groups") {
    std::vector<float> logits(2 * S * E, 0.0f);
    for (int64_t t = 0; t < 2 * S; t++) logits[t * E + t % 3] = 1.0f + 0.1f * static_cast<float>(t % 5);
    RouterOptions o = options(E, S, 2.0);
    RoutingPlan local, share;
    router_forward(local, logits.data(), 2 * S, o);
    o.n_groups_global = 6;  // 2 local groups of 6 in the global batch
    router_forward(share, logits.data(), 2 * S, o);
    CHECK(share.aux == Approx(local.aux * 2.0 / 6.0).epsilon(1e-12));
  }
}

TEST_CASE("router: the 'random' second policy drops some second choices, deterministically") {
  // E = 4, T = S = 96, cf = 8: C = 192, so nothing is dropped for capacity.
  // t % 3 == 0: logits (0, -20, -20, -20) rotated: g2 ~ 2e-9, 2 g2 < U: always dropped;
  // t % 3 == 1: second logit -0.001 below the first: 2 g2 ~ 0.9995, nearly always kept;
  // t % 3 == 2: second logit -ln 3 below the first: g2 = 1/4, dropped with probability 1/2.
  const int64_t E = 4, T = 96;
  std::vector<float> logits(T * E, -20.0f);
  for (int64_t t = 0; t < T; t++) {
    const int64_t first = t % E, second = (t + 1) % E;
    logits[t * E + first] = 0.0f;
    if (t % 3 == 1) logits[t * E + second] = -0.001f;
    if (t % 3 == 2) logits[t * E + second] = -static_cast<float>(std::log(3.0));
  }
  RouterOptions o = options(E, T, 8.0);
  RoutingPlan all;
  router_forward(all, logits.data(), T, o);
  CHECK(all.dropped == 0);

  o.second = SecondPolicy::random;
  o.seed = 7;
  RoutingPlan r1, r2, r3;
  router_forward(r1, logits.data(), T, o);
  router_forward(r2, logits.data(), T, o);
  o.seed = 8;
  router_forward(r3, logits.data(), T, o);
  CHECK(r1.kept == r2.kept);  // same seed, same decisions
  CHECK(r1.kept != r3.kept);  // another seed, other coin flips on the g2 = 1/4 tokens
  int64_t dropped_third = 0, dropped_second_half = 0, dropped_near_equal = 0;
  for (int64_t t = 0; t < T; t++) {
    INFO("token " << t);
    CHECK(r1.kept[t * 2] == 1);  // first choices are always dispatched
    CHECK(r1.weight(t, 0) == Approx(all.weight(t, 0)));  // and not renormalised
    if (!r1.kept[t * 2 + 1]) {
      CHECK(r1.weight(t, 1) == 0.0f);
      CHECK(r1.row[t * 2 + 1] == -1);
      (t % 3 == 0 ? dropped_third : t % 3 == 2 ? dropped_second_half : dropped_near_equal)++;
    }
  }
  std::printf("  random policy: dropped %lld of 32 tiny-g2, %lld of 32 g2=1/4, %lld of 32 g2~1/2\n",
              static_cast<long long>(dropped_third), static_cast<long long>(dropped_second_half),
              static_cast<long long>(dropped_near_equal));
  CHECK(dropped_third == 32);
  CHECK(dropped_second_half >= 4);
  CHECK(dropped_second_half <= 28);
  CHECK(dropped_near_equal <= 3);
  CHECK(r1.dropped == dropped_third + dropped_second_half + dropped_near_equal);
  int64_t kept_total = 0;
  for (int64_t e = 0; e < E; e++) kept_total += r1.load_after[e];
  CHECK(kept_total == 2 * T - r1.dropped);
  CHECK(r1.expert_offset[E] == kept_total);
}

TEST_CASE("router: no_drop keeps every choice") {
  // Everything goes to experts 0 and 1: with groups of 8 and C = 4, 16 choices drop;
  // with no_drop the whole batch is one group with capacity T.
  const int64_t E = 4, S = 8, T = 16;
  const auto logits = choice_logits(std::vector<std::pair<int, int>>(T, {0, 1}), E);
  RouterOptions o = options(E, S, 2.0);
  RoutingPlan dropping, kept;
  router_forward(dropping, logits.data(), T, o);
  CHECK(dropping.capacity == 4);
  CHECK(dropping.dropped == 16);
  o.no_drop = true;
  router_forward(kept, logits.data(), T, o);
  CHECK(kept.capacity == T);
  CHECK(kept.dropped == 0);
  CHECK(std::all_of(kept.kept.begin(), kept.kept.end(), [](uint8_t k) { return k == 1; }));
  CHECK(kept.load_after == std::vector<int64_t>{16, 16, 0, 0});
  for (int64_t t = 0; t < T; t++) {
    CHECK(kept.slot[t * 2] == t);
    CHECK(kept.row[t * 2 + 1] == T + t);
  }
}

TEST_CASE("router_backward matches finite differences with the plan frozen") {
  // Objective F(logits) = sum_t sum_k c[t,k] * weight(t,k) + aux_grad * aux, evaluated
  // with the base plan's discrete choices frozen (router_forward's `frozen`).
  const int64_t E = 4, S = 8, T = 24;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> logits(T * E), c(T * 2);
  for (auto& x : logits) x = dist(rng);
  for (int64_t t = 0; t < T; t++) logits[t * E] += 1.0f;  // crowd expert 0: some choices drop
  for (auto& x : c) x = dist(rng);
  const double aux_grad = 0.7;

  for (int64_t n_groups_global : {int64_t(0), int64_t(7)}) {
    RouterOptions o = options(E, S, 1.0);
    o.n_groups_global = n_groups_global;
    RoutingPlan base;
    router_forward(base, logits.data(), T, o);
    REQUIRE(base.dropped > 0);
    std::vector<float> dlogits(T * E, 0.5f);  // backward accumulates on top of this
    router_backward(dlogits.data(), c.data(), aux_grad, base);
    for (auto& x : dlogits) x -= 0.5f;

    auto F = [&](const std::vector<float>& l) {
      RoutingPlan p;
      router_forward(p, l.data(), T, o, &base);
      double f = aux_grad * p.aux;
      for (int64_t t = 0; t < T; t++)
        for (int k = 0; k < 2; k++) f += static_cast<double>(c[t * 2 + k]) * p.weight(t, k);
      return f;
    };
    const double h = 3e-3, tol = 1e-3, floor = 0.05;
    double worst = 0.0;
    std::vector<float> l = logits;
    for (int64_t i = 0; i < T * E; i++) {
      l[i] = logits[i] + static_cast<float>(h);
      const double fp = F(l);
      l[i] = logits[i] - static_cast<float>(h);
      const double fm = F(l);
      l[i] = logits[i];
      const double hp = static_cast<double>(logits[i] + static_cast<float>(h)) - logits[i];
      const double hm = static_cast<double>(logits[i]) - (logits[i] - static_cast<float>(h));
      const double numeric = (fp - fm) / (hp + hm);
      const double err = std::abs(numeric - dlogits[i]) / std::max({std::abs(numeric), std::abs(double(dlogits[i])), floor});
      worst = std::max(worst, err);
      INFO("n_groups_global " << n_groups_global << " logit [" << i / E << "," << i % E << "]: numeric "
                              << numeric << " analytic " << dlogits[i]);
      CHECK(err <= tol);
    }
    std::printf("  router_backward (n_groups_global %lld, %lld dropped): worst rel err %.2e (tol %.0e, floor %.2f, h %.0e)\n",
                static_cast<long long>(n_groups_global), static_cast<long long>(base.dropped), worst, tol, floor, h);
  }
}
