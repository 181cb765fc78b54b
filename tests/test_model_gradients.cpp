// Finite-difference checks of the MoE layer (with capacity drops) and of the whole
// model, MoE and dense.
//
// How the top-2 choice is held fixed: the router's decision (which two experts,
// which choices got a capacity slot) is piecewise constant in the inputs, so its
// derivative is that of the smooth function with the decision frozen. The tests
// route once at the unperturbed point and evaluate every perturbed point with that
// plan passed as `frozen` (Model::forward(..., frozen = true)); the gate VALUES,
// and so the combine weights and the aux loss's P, are still recomputed.
#include <catch2/catch.hpp>

#include "glam/model/model.h"
#include "glam/model/moe.h"
#include "gradcheck.h"

using namespace glam;
using gradcheck::check;
using gradcheck::random_vec;

namespace {

// route -> dispatch -> experts -> combine, and its backward, for one MoE layer.
struct MoeLayer {
  int64_t T, M, H, E;
  cpu::RouterOptions opt;
  cpu::Act act = cpu::Act::gelu;
  std::vector<float> x, wg, wi, wo, R;
  cpu::RoutingPlan plan;
  std::vector<float> logits, ein, pre, h, eout, out;
  double aux_weight = 0.5;  // large so the aux gradient is visible

  double forward(const cpu::RoutingPlan* frozen) {
    logits.resize(T * E);
    cpu::matmul_forward(logits.data(), x.data(), wg.data(), T, M, E);
    cpu::RoutingPlan base = frozen ? *frozen : cpu::RoutingPlan{};
    cpu::router_forward(plan, logits.data(), T, opt, frozen ? &base : nullptr);
    const int64_t rows = plan.expert_offset[E];
    ein.assign(rows * M, 0.0f); pre.assign(rows * H, 0.0f); h.assign(rows * H, 0.0f); eout.assign(rows * M, 0.0f);
    out.assign(T * M, 0.0f);
    cpu::dispatch_forward(ein.data(), x.data(), plan, M);
    cpu::experts_forward(eout.data(), pre.data(), h.data(), ein.data(), wi.data(), wo.data(), plan.expert_offset, M, H, act);
    cpu::combine_forward(out.data(), eout.data(), plan, M);
    return gradcheck::dot(out, R) + aux_weight * plan.aux;
  }

  void backward(std::vector<float>& dx, std::vector<float>& dwg, std::vector<float>& dwi, std::vector<float>& dwo) {
    const int64_t rows = plan.expert_offset[E];
    std::vector<float> deout(rows * M), dweight(T * 2), dein(rows * M, 0.0f), scratch(rows * H), dlogits(T * E, 0.0f);
    cpu::combine_backward(deout.data(), dweight.data(), R.data(), eout.data(), plan, M);
    cpu::experts_backward(dein.data(), dwi.data(), dwo.data(), scratch.data(), deout.data(), ein.data(), pre.data(),
                          h.data(), wi.data(), wo.data(), plan.expert_offset, M, H, act);
    cpu::dispatch_backward(dx.data(), dein.data(), plan, M);
    cpu::router_backward(dlogits.data(), dweight.data(), aux_weight, plan);
    cpu::matmul_backward(dx.data(), dwg.data(), dlogits.data(), x.data(), wg.data(), T, M, E);
  }
};

Config tiny_config(int64_t n_experts) {
  Config c;
  c.model.vocab_size = 50;
  c.model.d_model = 16;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.d_head = 8;
  c.model.d_ff = 24;
  c.model.n_experts = n_experts;
  c.model.group_size = 16;
  c.model.capacity_factor = 0.5;  // C = 4 < 2*16/4: some choices are dropped
  c.model.expert_act = "gelu";
  c.model.seq_len = 8;
  c.model.z_loss_weight = 0.1;    // larger than GLaM's so its gradient shows
  c.model.aux_loss_weight = 0.1;
  c.train.batch_rows = 2;
  c.train.seed = 3;
  c.validate();
  return c;
}

Batch tiny_batch(const Config& c) {
  Batch b;
  b.rows = c.train.batch_rows;
  b.seq_len = c.model.seq_len;
  std::mt19937_64 rng(11);
  for (int64_t t = 0; t < b.n_tokens(); t++) {
    b.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.targets.push_back(t % 5 == 4 ? -1 : static_cast<int32_t>(rng() % c.model.vocab_size));
    b.segments.push_back((t % b.seq_len) < 5 ? 0 : 1);
  }
  return b;
}

void check_model(int64_t n_experts) {
  Config cfg = tiny_config(n_experts);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  Batch batch = tiny_batch(cfg);
  model.params().zero_grad();
  LossParts parts = model.forward(batch);
  model.backward();
  if (n_experts > 0) REQUIRE(parts.dropped > 0);
  auto f = [&] { return model.forward(batch, false, /*frozen=*/true).loss; };
  for (Param& p : model.params().params) {
    const std::vector<float> grad = p.g;
    check(p.name, p.w, grad, f, 1e-2, 3e-2);
  }
}

}  // namespace

TEST_CASE("MoE layer backward matches finite differences, with capacity drops") {
  MoeLayer m;
  m.T = 32; m.M = 8; m.H = 12; m.E = 4;
  m.opt.n_experts = m.E;
  m.opt.group_size = 16;
  m.opt.capacity_factor = 0.5;  // C = 4 per expert and group: 32 choices for 16 slots
  m.x = random_vec(m.T * m.M, 1);
  m.wg = random_vec(m.M * m.E, 2);
  m.wi = random_vec(m.E * m.M * m.H, 3, 0.5f);
  m.wo = random_vec(m.E * m.H * m.M, 4, 0.5f);
  m.R = random_vec(m.T * m.M, 5);
  m.forward(nullptr);
  const cpu::RoutingPlan base = m.plan;
  REQUIRE(base.dropped > 0);
  std::vector<float> dx(m.x.size(), 0.0f), dwg(m.wg.size(), 0.0f), dwi(m.wi.size(), 0.0f), dwo(m.wo.size(), 0.0f);
  m.backward(dx, dwg, dwi, dwo);
  auto f = [&] { return m.forward(&base); };
  check("moe/x", m.x, dx, f, 1e-3);
  check("moe/router", m.wg, dwg, f, 1e-3);
  check("moe/wi", m.wi, dwi, f, 1e-3);
  check("moe/wo", m.wo, dwo, f, 1e-3);
}

TEST_CASE("whole MoE model: every parameter's gradient matches finite differences") { check_model(4); }

TEST_CASE("whole dense model (n_experts = 0): every gradient matches finite differences") { check_model(0); }
