// Several ranks sharing one GPU (or one GPU each) on a D x M mesh (GLAM_TEST_MESH)
// against one rank on the GPU, over three steps: loss parts, gathered gradients,
// and the Adafactor update. Both sides run the same bf16 GPU path, so only the
// order of fp32 partial sums differs, and a last-bit difference can flip the bf16
// rounding of an activation (2^-8). Bounds: loss parts relative 1e-3; gradients
// L1 within 5e-3 of each tensor's L1 and every element within 5e-2 of its largest.
// The update: these tensors are too small to be factored, so Adafactor's first
// steps are nearly sign(g) * step, and a gradient of noise size (1e-6 of 1e-2)
// whose sign differs moves that weight by a whole step the other way; so at most
// 0.5% of a tensor's weights may differ (by a quarter of its largest update), and then the mesh takes the one rank's
// weights so that every step is checked from the same point (without that, those
// few weights alone move the next step's gradients by ~2% L1). Runs in CI on the
// CPU emulation of CUDA too (cuda_emu_mesh_*). Run under mpirun; exits 77
// (SKIPPED) when no GPU is visible.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "glam/model/adafactor.h"
#include "glam/mesh/device.h"
#include "glam/model/model.h"

using namespace glam;

namespace {

Config mesh_config() {
  Config c;
  c.model.vocab_size = 96;    // splits over 1, 2, 3 model ranks
  c.model.d_model = 64;
  c.model.n_layers = 3;       // MoE, GEGLU, MoE
  c.model.n_heads = 6;
  c.model.d_head = 16;
  c.model.d_ff = 96;
  c.model.n_experts = 4;
  c.model.group_size = 32;
  c.model.seq_len = 32;
  c.train.batch_rows = 4;
  c.train.lr = 0.01;
  c.train.warmup_steps = 10000;
  c.validate();
  return c;
}

Batch rows_of(const Config& c, int64_t first, int64_t n) {
  Batch full;
  full.rows = c.train.batch_rows;
  full.seq_len = c.model.seq_len;
  std::mt19937_64 rng(11);
  for (int64_t t = 0; t < full.n_tokens(); t++) {
    full.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    full.targets.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    full.segments.push_back(static_cast<int32_t>((t % c.model.seq_len) / 10));
  }
  Batch b;
  b.rows = n;
  b.seq_len = full.seq_len;
  const int64_t from = first * b.seq_len, to = (first + n) * b.seq_len;
  b.ids.assign(full.ids.begin() + from, full.ids.begin() + to);
  b.targets.assign(full.targets.begin() + from, full.targets.begin() + to);
  b.segments.assign(full.segments.begin() + from, full.segments.begin() + to);
  return b;
}

}  // namespace

TEST_CASE("the GPU model on a mesh of ranks equals the GPU model on one rank") {
  const char* shape = std::getenv("GLAM_TEST_MESH");
  const Mesh mesh = Mesh::create(shape ? shape : "");
  const Mesh single = Mesh::single();
  const Config cfg = mesh_config();
  const int64_t rows = cfg.train.batch_rows / mesh.data_size;
  REQUIRE(select_device("cuda", mesh) == Device::cuda);
  Model ref(cfg, single, Device::cuda);
  Model model(cfg, mesh, Device::cuda);
  Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
  Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
  const Batch full = rows_of(cfg, 0, cfg.train.batch_rows), mine = rows_of(cfg, mesh.data_rank * rows, rows);
  for (int64_t step = 0; step < 3; step++) {
    INFO("mesh " << (shape ? shape : "default") << ", step " << step);
    ref.zero_grad();
    model.zero_grad();
    ref.set_step(step);
    model.set_step(step);
    const LossParts rp = ref.forward(full), mp = model.forward(mine);
    CHECK(mp.ce == Approx(rp.ce).epsilon(1e-3));
    CHECK(mp.z == Approx(rp.z).epsilon(1e-3));
    CHECK(mp.aux == Approx(rp.aux).epsilon(1e-3));
    CHECK(mp.dropped == rp.dropped);
    if (step == 2) break;
    ref.backward();
    model.backward();
    ref.sync_to_host();
    model.sync_to_host();
    ref.grads_to_host();
    model.grads_to_host();
    CHECK(model.grad_norm() == Approx(ref.grad_norm()).epsilon(1e-3));
    for (size_t i = 0; i < ref.params().params.size(); i++) {
      const Param& r = ref.params().params[i];
      const Param& m = model.params().params[i];
      const std::vector<float> g = gather_global(m, m.g, mesh);
      double err = 0.0, scale = 0.0, l1_err = 0.0, l1 = 0.0;
      for (size_t j = 0; j < r.g.size(); j++) {
        const double d = std::fabs(static_cast<double>(g[j]) - r.g[j]);
        err = std::max(err, d);
        scale = std::max(scale, std::fabs(static_cast<double>(r.g[j])));
        l1_err += d;
        l1 += std::fabs(static_cast<double>(r.g[j]));
      }
      INFO(r.name << ": max error " << err << " of max |g| " << scale << "; L1 " << l1_err << " of " << l1);
      CHECK(err <= 5e-2 * scale + 1e-7);
      CHECK(l1_err <= 5e-3 * l1 + 1e-7);
    }
    std::vector<std::vector<float>> before;  // one rank's weights before the update
    for (const Param& r : ref.params().params) before.push_back(r.w);
    const double lr = learning_rate(cfg.train, step + 1);
    ref.optimizer_step(ref_opt, lr, step);
    model.optimizer_step(opt, lr, step);
    ref.sync_to_host();
    model.sync_to_host();
    for (size_t i = 0; i < ref.params().params.size(); i++) {
      const Param& r = ref.params().params[i];
      Param& m = model.params().params[i];
      const std::vector<float> w = gather_global(m, m.w, mesh);
      float largest = 0.0f;  // one rank's largest update of this tensor
      for (size_t j = 0; j < r.w.size(); j++) largest = std::max(largest, std::fabs(r.w[j] - before[i][j]));
      int64_t moved = 0;  // weights whose update differs from one rank's by a quarter of that
      for (size_t j = 0; j < r.w.size(); j++) moved += std::fabs(w[j] - r.w[j]) > 0.25f * largest;
      INFO(r.name << ": " << moved << " of " << r.w.size() << " weights updated differently");
      CHECK(moved <= static_cast<int64_t>(r.w.size()) / 200);
      for_each_element(m, mesh, [&](int64_t local, int64_t global) { m.w[local] = r.w[global]; });
    }
    model.sync_to_device();
  }
}

int main(int argc, char** argv) {
  if (cuda_device_count() == 0) {
    std::printf("no CUDA device visible: skipped\n");
    return 77;
  }
  MPI_Init(&argc, &argv);
  const int rc = Catch::Session().run(argc, argv);
  MPI_Finalize();
  return rc;
}
