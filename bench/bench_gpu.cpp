// bench_gpu: training throughput of glam on one GPU and its model-FLOPs
// utilisation against the bf16 GEMM rate of the same GPU measured in the same run.
//
// usage: bench_gpu [--rows 8] [--steps 5] [--warmup 2] [--losses FILE] CONFIG...
//        bench_gpu --mpi-check                 (no GPU needed; under mpirun too)
// For each config: glam::Model on Device::cuda, Adafactor, random tokens; a
// step is forward + backward + optimizer, timed after the warm-up steps.
// --losses FILE writes one line per step (warm-up steps included) with the loss,
// its parts and the gradient norm as hex floats (%a): two runs of the same
// command must write the same bytes (every kernel is deterministic).
// --mpi-check starts MPI, sums and exchanges over glam::Mesh on every rank and
// exits 0 (1 if a value is wrong): the bundle's MPI works without a GPU.
//   model FLOPs per token = 6 * activated parameters + 12 * L * S * A
//   (matmuls forward and backward; attention scores and values, A = heads*d_head)
//   MFU = FLOPs per token * tokens/s / (measured cuBLAS bf16 GEMM rate)
// Exits 77 when no GPU is visible.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "glam/model/adafactor.h"
#include "glam/model/config.h"
#include "glam/layers/cuda/layers.h"
#include "glam/mesh/device.h"
#include "glam/model/model.h"
#include "glam/model/params.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// cuBLAS bf16 GEMM (fp32 accumulation), n x n x n, mean of `reps` after warm-up.
double gemm_tflops(int64_t n, int reps) {
  glam::cuda::Context ctx;
  glam::cuda::Buffer<glam::cuda::bf16> a(n * n), b(n * n);
  glam::cuda::Buffer<float> c(n * n), init(n * n);
  std::vector<float> host(n * n);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto& x : host) x = dist(rng);
  init.upload(host);
  glam::cuda::to_bf16(ctx, a.data(), init.data(), n * n);
  glam::cuda::to_bf16(ctx, b.data(), init.data(), n * n);
  for (int i = 0; i < 3; i++) glam::cuda::gemm(ctx, false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  ctx.sync();
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; i++) glam::cuda::gemm(ctx, false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  ctx.sync();
  return 2.0 * n * n * n * reps / seconds(t0, Clock::now()) / 1e12;
}

glam::Batch random_batch(const glam::Config& c, uint64_t seed) {
  glam::Batch b;
  b.rows = c.train.batch_rows;
  b.seq_len = c.model.seq_len;
  std::mt19937_64 rng(seed);
  for (int64_t t = 0; t < b.n_tokens(); t++) {
    b.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.targets.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.segments.push_back(0);
  }
  return b;
}

void bench_config(const std::string& path, int64_t rows, int steps, int warmup, double peak, std::FILE* losses) {
  glam::Config cfg = glam::load_config_file(path);
  cfg.train.batch_rows = rows;
  cfg.validate();
  glam::Mesh mesh = glam::Mesh::single();
  const auto t_init = Clock::now();
  glam::Model model(cfg, mesh, glam::Device::cuda);
  glam::Adafactor opt(model.params(), glam::AdafactorOptions::from(cfg.train));
  const double init_s = seconds(t_init, Clock::now());
  const glam::Batch batch = random_batch(cfg, 1);
  double fwd = 0, bwd = 0, upd = 0, loss = 0;
  Clock::time_point t0;
  for (int s = 0; s < warmup + steps; s++) {
    if (s == warmup) t0 = Clock::now();
    const auto a = Clock::now();
    model.params().zero_grad();
    model.set_step(s);
    const glam::LossParts parts = model.forward(batch);
    loss = parts.loss;
    const auto b = Clock::now();
    model.backward();
    const auto c = Clock::now();
    const double norm = model.grad_norm();
    model.optimizer_step(opt, glam::learning_rate(cfg.train, s + 1), s);
    const auto d = Clock::now();
    if (losses) {
      std::fprintf(losses, "%s step %d loss %a ce %a aux %a z %a grad_norm %a dropped %lld\n", path.c_str(), s,
                   parts.loss, parts.ce, parts.aux, parts.z, norm, static_cast<long long>(parts.dropped));
      std::fflush(losses);
    }
    if (s >= warmup) { fwd += seconds(a, b); bwd += seconds(b, c); upd += seconds(c, d); }
  }
  const double total = seconds(t0, Clock::now());
  const double tokens_per_s = static_cast<double>(batch.n_tokens()) * steps / total;
  const auto& m = cfg.model;
  const double flops_per_token = 6.0 * glam::count_activated_params(m) +
                                 12.0 * m.n_layers * m.seq_len * m.n_heads * m.d_head;
  const double mfu = flops_per_token * tokens_per_s / (peak * 1e12);
  std::printf("%-22s %6lld x %-5lld %9.0f tok/s  %6.3f s/step (fwd %.3f, bwd %.3f, norm+optimizer %.3f)  "
              "%8.2f GFLOP/token  MFU %5.1f %%  loss %.3f  init %.0f s\n",
              path.c_str(), static_cast<long long>(rows), static_cast<long long>(m.seq_len), tokens_per_s,
              total / steps, fwd / steps, bwd / steps, upd / steps, flops_per_token / 1e9, 100.0 * mfu, loss, init_s);
  std::fflush(stdout);
}

}  // namespace

// Every rank: a sum over the mesh and an all-to-all of rows through glam::Mesh.
int mpi_check() {
  glam::Mesh mesh = glam::Mesh::create("");
  const int n = mesh.world_size, r = mesh.world_rank;
  double sum = r + 1;
  mesh.allreduce_sum_world(&sum, 1);
  const int64_t width = 4;
  std::vector<int64_t> send_rows(n, 2), recv_rows(n, 2);
  std::vector<float> send(static_cast<size_t>(2 * width * n)), recv(send.size(), -1.0f);
  for (size_t i = 0; i < send.size(); i++) send[i] = static_cast<float>(1000 * r + static_cast<int64_t>(i));
  mesh.alltoallv_rows_data(send.data(), send_rows, recv.data(), recv_rows, width);
  bool ok = sum == n * (n + 1) / 2.0;
  for (int src = 0; src < n; src++)  // rows 2r, 2r+1 of rank src's send buffer
    for (int64_t i = 0; i < 2 * width; i++)
      ok = ok && recv[static_cast<size_t>(src * 2 * width + i)] == static_cast<float>(1000 * src + 2 * width * r + i);
  std::printf("bench_gpu --mpi-check: rank %d of %d: %s\n", r, n, ok ? "ok" : "WRONG VALUES");
  std::fflush(stdout);
  return mesh.any(!ok) ? 1 : 0;
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++)
    if (std::string(argv[i]) == "--mpi-check") {
      MPI_Init(&argc, &argv);
      int rc = 2;
      try {
        rc = mpi_check();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gpu --mpi-check: error: %s\n", e.what());
      }
      MPI_Finalize();
      return rc;
    }
  if (glam::cuda_device_count() == 0) {
    std::printf("bench_gpu: no CUDA device visible: skipped\n");
    return 77;
  }
  MPI_Init(&argc, &argv);
  int64_t rows = 8;
  int steps = 5, warmup = 2;
  std::vector<std::string> configs;
  std::string losses_path;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--rows" && i + 1 < argc) rows = std::atoll(argv[++i]);
    else if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--warmup" && i + 1 < argc) warmup = std::atoi(argv[++i]);
    else if (a == "--losses" && i + 1 < argc) losses_path = argv[++i];
    else configs.push_back(a);
  }
  int rc = 0;
  try {
    glam::Mesh mesh = glam::Mesh::single();
    glam::select_device("cuda", mesh);
    const double peak = gemm_tflops(8192, 10);
    std::printf("device %s: cuBLAS bf16 GEMM 8192^3 %.0f TFLOP/s (the MFU denominator)\n",
                glam::device_description(glam::Device::cuda).c_str(), peak);
    std::FILE* losses = nullptr;
    if (!losses_path.empty() && !(losses = std::fopen(losses_path.c_str(), "w")))
      throw std::runtime_error("cannot write " + losses_path);
    for (const std::string& c : configs) bench_config(c, rows, steps, warmup, peak, losses);
    if (losses) std::fclose(losses);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: error: %s\n", e.what());
    rc = 2;
  }
  MPI_Finalize();
  return rc;
}
