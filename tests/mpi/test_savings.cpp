// The memory and communication savings of issue 13 equal the plain step on a
// D x M mesh (GLAM_TEST_MESH; tests/mpi/CMakeLists.txt runs 1x1, 2x1, 1x2, 2x2, 3x2,
// and 8x2 and 4x4 oversubscribed).
//
// train.shard_state (gradients reduce-scattered over data, Adafactor statistics and
// the update of each data rank's rows only, weights all-gathered), alone and with
// micro-steps of 2 rows and remat: over 5 Adafactor steps the loss terms (relative
// 1e-6), the gradient norm (1e-6) and the weights after every update (1e-5 of their
// largest) equal the plain model's on the same mesh, and the statistics gathered
// back into the unsharded layout (what checkpoints store) equal the plain ones.
// Only the order of fp32 sums differs: MPI's reduce-scatter against its all-reduce.
// train.exchange_dtype = bf16: the all-to-all moves exactly half the bytes, and the
// losses stay within 1% of fp32's. No REQUIRE after the first collective.
#include <catch2/catch.hpp>

#include "rank_batch.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "glam/model/adafactor.h"
#include "glam/layers/cpu/gemm.h"
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

// Sharded on every mesh of the test: 48 rows per step (divisible by D = 1..8),
// heads, hidden units and vocabulary by M = 1, 2, 4.
Config savings_config() {
  Config c;
  c.model.vocab_size = 40;
  c.model.d_model = 24;
  c.model.n_layers = 3;            // MoE, GEGLU, MoE
  c.model.n_heads = 4;
  c.model.d_head = 6;
  c.model.d_ff = 16;
  c.model.n_experts = 24;          // placed on D = 1, 2, 3, 4, 8
  c.model.group_size = 8;
  c.model.capacity_factor = 0.5;   // drops
  c.model.seq_len = 8;
  c.model.aux_loss_weight = 0.1;
  c.model.z_loss_weight = 0.01;
  c.train.batch_rows = 48;
  c.train.seed = 9;
  c.train.lr = 0.01;
  c.train.warmup_steps = 2;
  c.train.factored_min_dim = 8;    // the matrices keep row and column statistics
  c.validate();
  return c;
}

Batch rank_rows(const Config& c, const Mesh& mesh, int64_t step) {
  return test::random_rank_rows(c, mesh, 300 + step, 7, 2, 4);
}

using test::close;

int64_t state_floats(const Adafactor& opt) {
  int64_t n = 0;
  for (const AdafactorSlot& s : opt.slots()) n += static_cast<int64_t>(s.v.size() + s.vr.size() + s.vc.size());
  return n;
}

}  // namespace

TEST_CASE("shard_state, alone and with micro-steps and remat, gives the plain run", "[savings]") {
  const Mesh& mesh = test_mesh();
  const Config cfg = savings_config();
  const std::pair<int64_t, bool> modes[] = {{0, false}, {2, true}};
  for (const auto& [micro, remat] : modes) {
    INFO("mesh " << mesh.data_size << "x" << mesh.model_size << ", micro_rows " << micro << ", remat " << remat);
    Config with = cfg;
    with.train.shard_state = true;
    with.train.remat = remat;
    with.train.micro_rows = micro;
    Model ref(cfg, mesh), model(with, mesh);
    Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
    Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
    for (int64_t step = 0; step < 5; step++) {
      INFO("step " << step);
      const Batch batch = rank_rows(cfg, mesh, step);
      ref.set_step(step);
      model.set_step(step);
      const LossParts rp = forward_backward(ref, batch, 0, mesh);
      const LossParts mp = forward_backward(model, batch, micro, mesh);
      CHECK(mp.loss == Approx(rp.loss).epsilon(1e-6));
      CHECK(mp.ce == Approx(rp.ce).epsilon(1e-6));
      CHECK(mp.aux == Approx(rp.aux).epsilon(1e-6));
      CHECK(mp.dropped == rp.dropped);
      CHECK(model.grad_norm() == Approx(ref.grad_norm()).epsilon(1e-6));
      const double lr = learning_rate(cfg.train, step + 1);
      ref.optimizer_step(ref_opt, lr, step);
      model.optimizer_step(opt, lr, step);
      for (size_t i = 0; i < ref.params().params.size(); i++) {
        INFO(ref.params().params[i].name);
        CHECK(close(model.params().params[i].w, ref.params().params[i].w, 1e-5));
      }
    }
    // each data rank keeps 1/D of the gradients and statistics of the tensors replicated over data
    if (mesh.data_size > 1) CHECK(state_floats(opt) < state_floats(ref_opt));
    int64_t grads = 0, ref_grads = 0, expected = 0;
    for (size_t i = 0; i < ref.params().params.size(); i++) {
      const Param& p = model.params().params[i];
      grads += static_cast<int64_t>(p.g.size());
      ref_grads += static_cast<int64_t>(ref.params().params[i].g.size());
      expected += p.zero_sharded() ? p.zero_rows * p.row_size() : p.size();
    }
    CHECK(grads == expected);
    if (mesh.data_size > 1) CHECK(grads < ref_grads);
    model.sync_to_host(&opt);  // the unsharded layout, as a checkpoint stores it
    CHECK(state_floats(opt) == state_floats(ref_opt));
    for (size_t i = 0; i < opt.slots().size(); i++) {
      INFO(ref.params().params[i].name);
      CHECK(close(opt.slots()[i].v, ref_opt.slots()[i].v, 1e-5));
      CHECK(close(opt.slots()[i].vr, ref_opt.slots()[i].vr, 1e-5));
      CHECK(close(opt.slots()[i].vc, ref_opt.slots()[i].vc, 1e-5));
    }
  }
}

TEST_CASE("shard_state moves the replicated gradients as reduce-scatter plus all-gather", "[savings]") {
  const Mesh& mesh = test_mesh();
  Config with = savings_config();
  with.train.shard_state = true;
  Model model(with, mesh);
  Adafactor opt(model.params(), AdafactorOptions::from(with.train));
  int64_t replicated = 0, rows_here = 0;  // floats of tensors sharded over data, and this rank's rows of them
  for (const Param& p : model.params().params)
    if (p.zero_sharded()) { replicated += p.size(); rows_here += p.zero_rows * p.row_size(); }
  CHECK((replicated > 0) == (mesh.data_size > 1));  // a data axis of one rank shards nothing
  const CommStats before = mesh.stats;
  model.set_step(0);
  forward_backward(model, rank_rows(with, mesh, 0), 0, mesh);
  model.optimizer_step(opt, 0.01, 0);
  const int64_t d = mesh.data_size > 1 ? 1 : 0;
  CHECK(mesh.stats.reduce_scatter_bytes - before.reduce_scatter_bytes == d * 4 * replicated);
  CHECK(mesh.stats.allgather_bytes - before.allgather_bytes == d * 4 * rows_here);
  CHECK(mesh.stats.allreduce_data_bytes - before.allreduce_data_bytes == 0);  // nothing else is summed over data
}

TEST_CASE("the bf16 all-to-all and model-axis sum: 2 bytes a value, values rounded once per sum", "[savings]") {
  const Mesh& mesh = test_mesh();
  const int D = mesh.data_size;
  const int64_t W = 5;  // floats per row; data rank r sends r + q + 1 rows to rank q
  std::vector<int64_t> send_rows(D), recv_rows(D);
  for (int q = 0; q < D; q++) { send_rows[q] = mesh.data_rank + q + 1; recv_rows[q] = q + mesh.data_rank + 1; }
  std::vector<float> send, recv_bf16, recv_f32;
  for (int q = 0; q < D; q++)
    for (int64_t i = 0; i < send_rows[q] * W; i++) send.push_back(1.0f + 0.001f * static_cast<float>(mesh.data_rank * 97 + q * 13 + i));
  int64_t n_recv = 0, n_other = 0;
  for (int q = 0; q < D; q++) { n_recv += recv_rows[q]; if (q != mesh.data_rank) n_other += send_rows[q]; }
  recv_bf16.resize(n_recv * W);
  recv_f32.resize(n_recv * W);
  const int64_t b0 = mesh.stats.alltoall_bytes;
  mesh.alltoallv_rows_data_bf16(send.data(), send_rows, recv_bf16.data(), recv_rows, W);
  const int64_t b1 = mesh.stats.alltoall_bytes;
  mesh.alltoallv_rows_data(send.data(), send_rows, recv_f32.data(), recv_rows, W);
  const int64_t b2 = mesh.stats.alltoall_bytes;
  if (D > 1) CHECK(b1 - b0 == 2 * n_other * W);
  if (D > 1) CHECK(b2 - b1 == 4 * n_other * W);
  bool rounded = true;
  for (size_t i = 0; i < recv_f32.size(); i++) rounded = rounded && recv_bf16[i] == cpu::bf16_round(recv_f32[i]);
  CHECK(rounded);
  // model axis: M values 1 + 2^-9 k sum to a bf16 value within one rounding per step
  std::vector<float> x(64), exact(64);
  for (int64_t i = 0; i < 64; i++) x[i] = exact[i] = 1.0f + static_cast<float>(i) / 512.0f;
  const int64_t m0 = mesh.stats.allreduce_model_bytes;
  mesh.allreduce_sum_model_bf16(x.data(), 64);
  if (mesh.model_size > 1) CHECK(mesh.stats.allreduce_model_bytes - m0 == 2 * 64);
  for (int64_t i = 0; i < 64; i++) {
    if (mesh.model_size > 1) CHECK(x[i] == cpu::bf16_round(x[i]));  // one rank: nothing on the wire
    CHECK(x[i] == Approx(exact[i] * mesh.model_size).epsilon(mesh.model_size * 0.004));
  }
}

TEST_CASE("bf16 exchanges halve the all-to-all and stay within 1% of the fp32 loss", "[savings]") {
  const Mesh& mesh = test_mesh();
  const Config cfg = savings_config();
  Config with = cfg;
  with.train.exchange_dtype = "bf16";
  Model ref(cfg, mesh), model(with, mesh);
  Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
  Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
  for (int64_t step = 0; step < 5; step++) {
    INFO("mesh " << mesh.data_size << "x" << mesh.model_size << ", step " << step);
    const Batch batch = rank_rows(cfg, mesh, step);
    ref.set_step(step);
    model.set_step(step);
    const CommStats s0 = mesh.stats;
    const LossParts rp = forward_backward(ref, batch, 0, mesh);
    const CommStats s1 = mesh.stats;
    const LossParts mp = forward_backward(model, batch, 0, mesh);
    const CommStats s2 = mesh.stats;
    // the routing of later layers differs with the rounding, so only the share is compared here
    if (mesh.data_size > 1)
      CHECK(s2.alltoall_bytes - s1.alltoall_bytes < 0.6 * (s1.alltoall_bytes - s0.alltoall_bytes));
    if (mesh.model_size > 1)
      CHECK(s2.allreduce_model_bytes - s1.allreduce_model_bytes < s1.allreduce_model_bytes - s0.allreduce_model_bytes);
    CHECK(mp.loss == Approx(rp.loss).epsilon(1e-2));
    const double lr = learning_rate(cfg.train, step + 1);
    ref.optimizer_step(ref_opt, lr, step);
    model.optimizer_step(opt, lr, step);
  }
}

namespace {

// The whole shard of p, whether its weights are kept as this rank's rows or not.
std::vector<float> whole_weights(const Param& p, const Mesh& mesh) {
  Param copy = p;
  gather_weight_rows(copy, mesh);
  return copy.w;
}

// All-gather bytes of one step of train.shard_weights, by replaying the model's
// schedule: two layer windows (layer l in window l % 2), the next layer gathered
// behind each, the embedding and final norm once; every window empty after an update.
int64_t expected_gather_bytes(const Model& m, const std::vector<std::vector<size_t>>& layers, int64_t micro_steps) {
  const int64_t L = static_cast<int64_t>(layers.size());
  auto bytes = [&](const std::vector<size_t>& ids) {
    int64_t b = 0;
    for (size_t i : ids) {
      const Param& p = m.params().params[i];
      if (p.zero_weights) b += 4 * p.zero_rows * p.row_size();
    }
    return b;
  };
  int64_t held[2] = {-1, -1}, total = 0;
  auto gather = [&](int64_t l) {
    if (l < 0 || l >= L || held[l % 2] == l) return;
    held[l % 2] = l;
    total += bytes(layers[l]);
  };
  for (int64_t k = 0; k < micro_steps; k++) {
    for (int64_t l = 0; l < L; l++) { gather(l); gather(l + 1); }
    for (int64_t l = L - 1; l >= 0; l--) { gather(l); gather(l - 1); }
  }
  std::vector<size_t> outer_ids;
  for (size_t i = 0; i < m.params().params.size(); i++) {
    const std::string& n = m.params().params[i].name;
    if (n == "embedding" || n == "final_norm_scale") outer_ids.push_back(i);
  }
  return total + bytes(outer_ids);
}

std::vector<std::vector<size_t>> layer_ids(const Model& m, int64_t L) {
  std::vector<std::vector<size_t>> out(L);
  for (int64_t l = 0; l < L; l++) {
    char prefix[32];
    std::snprintf(prefix, sizeof prefix, "layer_%02lld/", static_cast<long long>(l));
    for (size_t i = 0; i < m.params().params.size(); i++)
      if (m.params().params[i].name.rfind(prefix, 0) == 0) out[l].push_back(i);
  }
  return out;
}

}  // namespace

TEST_CASE("shard_weights: the weights kept as each data rank's rows and gathered per layer give the plain run",
          "[savings]") {
  const Mesh& mesh = test_mesh();
  const Config cfg = savings_config();
  const std::pair<int64_t, bool> modes[] = {{0, false}, {2, true}};
  for (const auto& [micro, remat] : modes) {
    INFO("mesh " << mesh.data_size << "x" << mesh.model_size << ", micro_rows " << micro << ", remat " << remat);
    Config with = cfg;
    with.train.shard_state = with.train.shard_weights = true;
    with.train.remat = remat;
    with.train.micro_rows = micro;
    Model ref(cfg, mesh), model(with, mesh);
    model.sync_to_device();  // as glam train does: the other rows' weights go
    Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
    Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
    const std::vector<std::vector<size_t>> layers = layer_ids(model, cfg.model.n_layers);
    const int64_t rows = cfg.train.batch_rows / mesh.data_size;
    const int64_t micro_steps = micro > 0 ? rows / micro : 1;
    for (int64_t step = 0; step < 5; step++) {
      INFO("step " << step);
      const Batch batch = rank_rows(cfg, mesh, step);
      ref.set_step(step);
      model.set_step(step);
      const LossParts rp = forward_backward(ref, batch, 0, mesh);
      const int64_t g0 = mesh.stats.allgather_bytes;
      const LossParts mp = forward_backward(model, batch, micro, mesh);
      CHECK(mp.loss == Approx(rp.loss).epsilon(1e-6));
      CHECK(mp.ce == Approx(rp.ce).epsilon(1e-6));
      CHECK(mp.dropped == rp.dropped);
      CHECK(model.grad_norm() == Approx(ref.grad_norm()).epsilon(1e-6));
      const double lr = learning_rate(cfg.train, step + 1);
      ref.optimizer_step(ref_opt, lr, step);
      model.optimizer_step(opt, lr, step);  // updates this rank's rows; nothing is all-gathered
      const int64_t gathered = mesh.stats.allgather_bytes - g0;
      CHECK(gathered == (mesh.data_size > 1 ? expected_gather_bytes(model, layers, micro_steps) : 0));
      for (size_t i = 0; i < ref.params().params.size(); i++) {
        INFO(ref.params().params[i].name);
        CHECK(close(whole_weights(model.params().params[i], mesh), ref.params().params[i].w, 1e-5));
      }
      if (step == 2) {  // a checkpoint's view: whole weights on the host, then on with the rows again
        model.sync_to_host(&opt);
        for (const Param& p : model.params().params) CHECK(!p.w_on_shard);
      }
    }
    int64_t kept = 0, ref_kept = 0;  // weight floats held between steps
    for (size_t i = 0; i < ref.params().params.size(); i++) {
      kept += static_cast<int64_t>(model.params().params[i].w.size());
      ref_kept += static_cast<int64_t>(ref.params().params[i].w.size());
    }
    if (mesh.data_size > 1) CHECK(kept < ref_kept);
    else CHECK(kept == ref_kept);
  }
}

TEST_CASE("shard_weights needs shard_state", "[savings]") {
  Config c = savings_config();
  c.train.shard_weights = true;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("train.shard_weights needs train.shard_state true"));
}
