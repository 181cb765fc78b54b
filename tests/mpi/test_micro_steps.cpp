// Micro-steps (train.micro_rows) and rematerialisation (train.remat) equal the
// plain step on a D x M mesh (GLAM_TEST_MESH; tests/mpi/CMakeLists.txt runs 1x1,
// 2x1, 1x2, 2x2, 3x2).
//
// Two models with the same weights on the same mesh: one takes each step's rows
// at once, the other in micro-steps of 1 and of 2 rows (forward_backward), with
// remat, and with both. Remat alone recomputes the same operations on the same
// inputs, so its losses and gradients must be bit for bit the plain ones. Over 3
// Adafactor steps: the loss terms (relative 1e-6; targets, choices, drops and
// loads exactly: the same groups are routed, capacity drops and the random second
// expert included), every gradient shard (1e-5 of its largest), the gradient norm
// and the weights after each update (1e-5). Only the order of the fp32 sums
// differs (micro_steps.h says which). No REQUIRE after the first collective.
#include <catch2/catch.hpp>

#include "rank_batch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

#include "glam/model/adafactor.h"
#include "glam/model/micro_steps.h"
#include "glam/model/model.h"

using namespace glam;

namespace {

const Mesh& test_mesh() {
  static const Mesh mesh = [] {
    const char* shape = std::getenv("GLAM_TEST_MESH");
    return Mesh::create(shape ? shape : "");
  }();
  return mesh;
}

Config micro_config() {
  Config c;
  c.model.vocab_size = 36;
  c.model.d_model = 24;
  c.model.n_layers = 3;            // MoE, GEGLU, MoE
  c.model.n_heads = 6;
  c.model.d_head = 4;
  c.model.d_ff = 12;
  c.model.n_experts = 6;
  c.model.group_size = 8;          // one row of 8 tokens: micro-steps of 1 row are whole groups
  c.model.capacity_factor = 0.5;   // drops
  c.model.second_policy = "random";
  c.model.seq_len = 8;
  c.model.aux_loss_weight = 0.1;
  c.model.z_loss_weight = 0.01;
  c.train.batch_rows = 12;         // 12, 6 or 4 rows per data rank
  c.train.seed = 5;
  c.train.lr = 0.01;
  c.train.warmup_steps = 2;
  c.train.factored_min_dim = 12;
  c.validate();
  return c;
}

Batch rank_rows(const Config& c, const Mesh& mesh, int64_t step) {
  return test::random_rank_rows(c, mesh, 100 + step, 5, 3, 3);
}

using test::close;

void compare_parts(const LossParts& m, const LossParts& r) {
  CHECK(m.loss == Approx(r.loss).epsilon(1e-6));
  CHECK(m.ce == Approx(r.ce).epsilon(1e-6));
  CHECK(m.aux == Approx(r.aux).epsilon(1e-6));
  CHECK(m.z == Approx(r.z).epsilon(1e-6));
  CHECK(m.n_targets == r.n_targets);
  CHECK(m.choices == r.choices);
  CHECK(m.dropped == r.dropped);
  CHECK(m.layer_dropped == r.layer_dropped);
  CHECK(m.load_before == r.load_before);
  CHECK(m.load_after == r.load_after);
}

}  // namespace

TEST_CASE("micro-steps and remat give the plain step's gradients and losses", "[micro]") {
  const Mesh& mesh = test_mesh();
  const Config cfg = micro_config();
  const std::pair<int64_t, bool> modes[] = {{1, false}, {2, false}, {0, true}, {2, true}};
  for (const auto& [micro, remat] : modes) {
    INFO("mesh " << mesh.data_size << "x" << mesh.model_size << ", micro_rows " << micro << ", remat " << remat);
    Config with = cfg;
    with.train.remat = remat;
    Model ref(cfg, mesh), model(with, mesh);
    Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
    Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
    for (int64_t step = 0; step < 3; step++) {
      INFO("step " << step);
      const Batch batch = rank_rows(cfg, mesh, step);
      ref.set_step(step);
      model.set_step(step);
      const LossParts rp = forward_backward(ref, batch, 0, mesh);
      const LossParts mp = forward_backward(model, batch, micro, mesh);
      CHECK(mp.dropped > 0);  // capacity drops happen, in the same places
      if (remat) CHECK(model.activation_bytes() < ref.activation_bytes() * 3 / 4);  // 3 layers: 0.62
      compare_parts(mp, rp);
      for (size_t i = 0; i < ref.params().params.size(); i++) {
        INFO(ref.params().params[i].name);
        CHECK(close(model.params().params[i].g, ref.params().params[i].g, 1e-5));
        if (micro == 0) CHECK(model.params().params[i].g == ref.params().params[i].g);  // remat alone: bitwise
      }
      if (micro == 0) CHECK(mp.loss == rp.loss);
      CHECK(model.grad_norm() == Approx(ref.grad_norm()).epsilon(1e-6));
      const double lr = learning_rate(cfg.train, step + 1);
      ref.optimizer_step(ref_opt, lr, step);
      model.optimizer_step(opt, lr, step);
      for (size_t i = 0; i < ref.params().params.size(); i++) {
        INFO(ref.params().params[i].name);
        CHECK(close(model.params().params[i].w, ref.params().params[i].w, 1e-5));
      }
    }
  }
}

TEST_CASE("micro_rows that do not divide a rank's rows are refused, naming the key", "[micro]") {
  const Mesh& mesh = test_mesh();
  const Config cfg = micro_config();
  Model model(cfg, mesh);
  const Batch batch = rank_rows(cfg, mesh, 0);
  // 12 / D rows per rank: 5 divides none of 12, 6, 4 (and is not the whole batch)
  CHECK_THROWS_WITH(forward_backward(model, batch, 5, mesh), Catch::Contains("train.micro_rows 5"));
}
