// Training behaviour: a tiny GLaM overfits one fixed batch with Adafactor; a step
// with a non-finite gradient is detected; weights round-trip through HDF5.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "glam/model/adafactor.h"
#include "glam/base/check.h"
#include "glam/model/model.h"
#include "glam/checkpoint/weights.h"

using namespace glam;

namespace {

Config small_config(int64_t n_experts) {
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.d_head = 16;
  c.model.d_ff = 64;
  c.model.n_experts = n_experts;
  c.model.group_size = 32;
  c.model.seq_len = 16;
  c.train.batch_rows = 4;
  c.train.lr = 0.01;
  c.train.warmup_steps = 10000;
  c.validate();
  return c;
}

Batch fixed_batch(const Config& c) {
  Batch b;
  b.rows = c.train.batch_rows;
  b.seq_len = c.model.seq_len;
  std::mt19937_64 rng(5);
  for (int64_t t = 0; t < b.n_tokens(); t++) {
    b.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.targets.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.segments.push_back(0);
  }
  return b;
}

}  // namespace

TEST_CASE("a tiny MoE model overfits one fixed batch to near-zero loss") {
  for (int64_t experts : {4, 0}) {
    Config cfg = small_config(experts);
    Mesh mesh = Mesh::single();
    Model model(cfg, mesh);
    Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
    Batch batch = fixed_batch(cfg);
    double first = 0.0, ce = 0.0;
    for (int64_t step = 0; step < 300; step++) {
      model.params().zero_grad();
      LossParts parts = model.forward(batch);
      if (step == 0) first = parts.ce;
      ce = parts.ce;
      model.backward();
      opt.step(model.params(), learning_rate(cfg.train, step + 1), step, mesh);
    }
    std::printf("  overfit (E=%lld): ce %.3f -> %.4f after 300 steps\n", static_cast<long long>(experts), first, ce);
    CHECK(first > 4.0);  // about ln(64) = 4.16 at init and above
    CHECK(ce < 0.05);
  }
}

TEST_CASE("a NaN in the gradients makes the global norm non-finite") {
  Config cfg = small_config(4);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  model.params().zero_grad();
  model.forward(fixed_batch(cfg));
  model.backward();
  CHECK(std::isfinite(global_grad_norm(model.params(), mesh)));
  model.params().get("layer_01/ffn/wo").g[3] = std::nanf("");
  CHECK_FALSE(std::isfinite(global_grad_norm(model.params(), mesh)));
}

TEST_CASE("weights round-trip through HDF5 and reproduce the loss") {
  Config cfg = small_config(4);
  Mesh mesh = Mesh::single();
  Model a(cfg, mesh);
  Batch batch = fixed_batch(cfg);
  const double loss_a = a.forward(batch).loss;
  const std::string path =
      (std::filesystem::temp_directory_path() / ("glam_weights_test_" + std::to_string(::getpid()) + ".h5")).string();
  save_weights(path, a.params(), cfg, mesh);
  REQUIRE_FALSE(std::filesystem::exists(path + ".tmp"));
  Config other = cfg;
  other.train.seed = 999;  // different init, then overwritten by the file
  Model b(other, mesh);
  CHECK(b.forward(batch).loss != loss_a);
  load_weights(path, b.params(), mesh);
  for (size_t i = 0; i < a.params().params.size(); i++) CHECK(a.params().params[i].w == b.params().params[i].w);
  CHECK(b.forward(batch).loss == loss_a);

  Config bigger = cfg;
  bigger.model.d_model = 48;
  Model c(bigger, mesh);
  CHECK_THROWS_AS(load_weights(path, c.params(), mesh), UserError);
  CHECK_THROWS_AS(load_weights(path + ".missing", c.params(), mesh), UserError);
  std::filesystem::remove(path);
}
