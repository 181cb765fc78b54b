// The whole model on the GPU against the CPU model: the same initial weights, the
// loss parts and every parameter's gradient, then 20 Adafactor steps whose loss
// curve must follow the CPU's. Exits 77 (SKIPPED) without a visible GPU.
//
// Bounds: the GPU rounds GEMM operands to bf16 (8 significant bits), the CPU
// computes in fp32, so values agree to bf16 precision, not bit for bit:
//  - loss parts: relative 1e-2;
//  - gradients: per parameter, |g_gpu - g_cpu| <= 5e-2 * max|g_cpu| (+ 1e-6);
//  - after 20 steps the two losses differ by < 3 % and both have fallen.
// Routing is compared only through the loss parts and gradients here; the exact
// decisions on identical logits are tests/cuda/test_cuda_layers' router case.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "glam/adafactor.h"
#include "glam/model.h"

using namespace glam;

namespace {

Config small_config(int64_t n_experts) {
  Config c;
  c.model.vocab_size = 96;
  c.model.d_model = 64;
  c.model.n_layers = 4;
  c.model.n_heads = 4;
  c.model.d_head = 16;
  c.model.d_ff = 128;
  c.model.n_experts = n_experts;
  c.model.group_size = 64;
  c.model.capacity_factor = 2.0;
  c.model.seq_len = 32;
  c.train.batch_rows = 4;
  c.train.lr = 0.01;
  c.train.warmup_steps = 10000;
  c.validate();
  return c;
}

Batch random_batch(const Config& c, uint64_t seed) {
  Batch b;
  b.rows = c.train.batch_rows;
  b.seq_len = c.model.seq_len;
  std::mt19937_64 rng(seed);
  for (int64_t t = 0; t < b.n_tokens(); t++) {
    b.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.targets.push_back(t % 11 == 5 ? -1 : static_cast<int32_t>(rng() % c.model.vocab_size));
    b.segments.push_back(static_cast<int32_t>((t % c.model.seq_len) / 12));
  }
  return b;
}

}  // namespace

TEST_CASE("the GPU model's loss and gradients match the CPU model's") {
  for (const char* attention : {"flash", "naive"})
  for (int64_t experts : {8, 0}) {
    setenv("GLAM_CUDA_ATTENTION", attention, 1);
    INFO("experts " << experts << ", attention " << attention);
    const Config cfg = small_config(experts);
    Mesh mesh = Mesh::single();
    Model cpu_model(cfg, mesh);
    Model gpu_model(cfg, mesh, Device::cuda);
    const Batch batch = random_batch(cfg, 3);
    cpu_model.params().zero_grad();
    gpu_model.params().zero_grad();
    const LossParts want = cpu_model.forward(batch);
    const LossParts got = gpu_model.forward(batch);
    CHECK(got.ce == Approx(want.ce).epsilon(1e-2));
    CHECK(got.z == Approx(want.z).epsilon(2e-2));
    CHECK(got.aux == Approx(want.aux).epsilon(1e-2));
    CHECK(got.n_targets == want.n_targets);
    cpu_model.backward();
    gpu_model.backward();
    gpu_model.sync_to_host();
    CHECK(gpu_model.grad_norm() == Approx(cpu_model.grad_norm()).epsilon(5e-2));
    for (size_t i = 0; i < cpu_model.params().params.size(); i++) {
      const Param& c = cpu_model.params().params[i];
      const Param& g = gpu_model.params().params[i];
      REQUIRE(c.name == g.name);
      REQUIRE(c.w == g.w);  // the same initialisation
      double err = 0.0, scale = 0.0;
      for (size_t j = 0; j < c.g.size(); j++) {
        err = std::max(err, std::fabs(static_cast<double>(g.g[j]) - c.g[j]));
        scale = std::max(scale, std::fabs(static_cast<double>(c.g[j])));
      }
      INFO(c.name << ": max error " << err << ", max |g| " << scale);
      CHECK(err <= 5e-2 * scale + 1e-6);
    }
  }
  unsetenv("GLAM_CUDA_ATTENTION");
}

TEST_CASE("20 training steps on the GPU follow the CPU loss curve") {
  const Config cfg = small_config(8);
  Mesh mesh = Mesh::single();
  Model cpu_model(cfg, mesh);
  Model gpu_model(cfg, mesh, Device::cuda);
  Adafactor cpu_opt(cpu_model.params(), AdafactorOptions::from(cfg.train));
  Adafactor gpu_opt(gpu_model.params(), AdafactorOptions::from(cfg.train));
  double cpu_first = 0, gpu_first = 0, cpu_last = 0, gpu_last = 0;
  for (int64_t step = 0; step < 20; step++) {
    const Batch batch = random_batch(cfg, 100 + step % 4);
    const double lr = learning_rate(cfg.train, step + 1);
    cpu_model.params().zero_grad();
    gpu_model.params().zero_grad();
    cpu_model.set_step(step);
    gpu_model.set_step(step);
    const double lc = cpu_model.forward(batch).loss, lg = gpu_model.forward(batch).loss;
    cpu_model.backward();
    gpu_model.backward();
    cpu_model.optimizer_step(cpu_opt, lr, step);
    gpu_model.optimizer_step(gpu_opt, lr, step);
    if (step == 0) { cpu_first = lc; gpu_first = lg; }
    cpu_last = lc; gpu_last = lg;
    INFO("step " << step << ": cpu " << lc << ", gpu " << lg);
    CHECK(std::fabs(lg - lc) < 0.03 * lc);
  }
  CHECK(cpu_last < cpu_first);
  CHECK(gpu_last < gpu_first);
  // the GPU's weights and statistics come back to the host (as before a checkpoint)
  gpu_model.sync_to_host(&gpu_opt);
  double max_diff = 0.0, max_w = 0.0;
  for (size_t i = 0; i < cpu_model.params().params.size(); i++)
    for (size_t j = 0; j < cpu_model.params().params[i].w.size(); j++) {
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(gpu_model.params().params[i].w[j]) -
                                              cpu_model.params().params[i].w[j]));
      max_w = std::max(max_w, std::fabs(static_cast<double>(cpu_model.params().params[i].w[j])));
    }
  CHECK(max_diff < 0.05 * max_w);
  // and a model resumed from them on the GPU continues where the first one is
  Model resumed(cfg, mesh, Device::cuda);
  resumed.params() = gpu_model.params();
  resumed.sync_to_device(&gpu_opt);
  const Batch batch = random_batch(cfg, 500);
  CHECK(resumed.forward(batch).loss == Approx(gpu_model.forward(batch).loss).epsilon(1e-6));
}

TEST_CASE("logits and target log-probs of the GPU model match the CPU model's") {
  const Config cfg = small_config(8);
  Mesh mesh = Mesh::single();
  Model cpu_model(cfg, mesh);
  Model gpu_model(cfg, mesh, Device::cuda);
  const Batch batch = random_batch(cfg, 7);
  cpu_model.forward(batch);
  gpu_model.forward(batch);
  const std::vector<float>& want = cpu_model.logits();
  const std::vector<float>& got = gpu_model.logits();
  REQUIRE(got.size() == want.size());
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); i++) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  CHECK(err <= 2e-2 * scale);
  const std::vector<double> lp_cpu = cpu_model.target_logprobs(), lp_gpu = gpu_model.target_logprobs();
  for (size_t t = 0; t < lp_cpu.size(); t++) CHECK(lp_gpu[t] == Approx(lp_cpu[t]).margin(5e-2));
}

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device visible: skipped\n");
    return 77;
  }
  MPI_Init(&argc, &argv);
  const int rc = Catch::Session().run(argc, argv);
  MPI_Finalize();
  return rc;
}
