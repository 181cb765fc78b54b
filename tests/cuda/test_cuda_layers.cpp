// Every CUDA layer against the CPU reference (glam::cpu) on random inputs, forward
// and backward. Without a visible GPU the executable exits with 77, which CTest
// reports as SKIPPED.
//
// Error bounds, relative to the largest magnitude of the reference tensor:
//  - bf16 operands: both sides get the SAME bf16-rounded inputs, so only the fp32
//    accumulation order differs: 1e-4 for GEMMs (K <= 512), 1e-5 for pointwise;
//  - layers that write bf16 (rmsnorm, geglu, act forward): one bf16 rounding, 2^-8;
//  - fp32 layers (attention, loss, combine): 1e-5 (expf/tanhf may differ by an ulp).
// Gating decisions (choices, slots, kept, rows) must be identical.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>

#include "glam/adafactor.h"
#include "glam/params.h"
#include <cstdio>
#include <random>
#include <vector>

#include "glam/cuda/adafactor.h"
#include "glam/cuda/layers.h"
#include "glam/layers.h"
#include "glam/mesh.h"
#include "glam/moe.h"

namespace cu = glam::cuda;
namespace cpu = glam::cpu;
using cu::bf16;

namespace {

std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// The bf16 values both backends use, as floats (round to nearest even).
std::vector<float> round_bf16(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = __bfloat162float(__float2bfloat16(x[i]));
  return r;
}

std::vector<bf16> as_bf16(const std::vector<float>& x) {
  std::vector<bf16> r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = __float2bfloat16(x[i]);
  return r;
}

std::vector<float> as_f32(const std::vector<bf16>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = __bfloat162float(x[i]);
  return r;
}

// max |got - want| / max(|want|, tiny)
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double err = 0.0, scale = 1e-12;
  for (size_t i = 0; i < want.size(); i++) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return err / scale;
}

template <typename T>
cu::Buffer<T> device(const std::vector<T>& host) {
  cu::Buffer<T> b;
  b.upload(host);
  return b;
}

}  // namespace

TEST_CASE("matmul forward and backward: cuBLAS bf16 equals the CPU on the same bf16 inputs") {
  cu::Context ctx;
  const int64_t T = 96, K = 320, N = 136;
  const auto in = round_bf16(random_vec(T * K, 1)), w = round_bf16(random_vec(K * N, 2, 0.05f));
  const auto dout = round_bf16(random_vec(T * N, 3));
  std::vector<float> out(T * N), din(T * K, 0.5f), dw(K * N, -0.25f);
  cpu::matmul_forward(out.data(), in.data(), w.data(), T, K, N);
  cpu::matmul_backward(din.data(), dw.data(), dout.data(), in.data(), w.data(), T, K, N);

  auto d_in = device(as_bf16(in)), d_w = device(as_bf16(w)), d_dout = device(as_bf16(dout));
  cu::Buffer<float> d_out(T * N);
  auto d_din = device(std::vector<float>(T * K, 0.5f)), d_dw = device(std::vector<float>(K * N, -0.25f));
  cu::matmul_forward(ctx, d_out.data(), d_in.data(), d_w.data(), T, K, N);
  cu::matmul_backward(ctx, d_din.data(), d_dw.data(), d_dout.data(), d_in.data(), d_w.data(), T, K, N);
  ctx.sync();
  CHECK(rel_error(d_out.download(), out) < 1e-4);
  CHECK(rel_error(d_din.download(), din) < 1e-4);
  CHECK(rel_error(d_dw.download(), dw) < 1e-4);
}

TEST_CASE("rmsnorm forward (bf16 out, fp32 statistics) and backward") {
  cu::Context ctx;
  const int64_t T = 37, M = 200;
  const auto x = random_vec(T * M, 4), g = random_vec(M, 5), dout = random_vec(T * M, 6);
  std::vector<float> out(T * M), rstd(T), dx(T * M, 0.1f), dg(M, 0.2f);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), T, M);
  cpu::rmsnorm_backward(dx.data(), dg.data(), dout.data(), x.data(), g.data(), rstd.data(), T, M);

  auto d_x = device(x), d_g = device(g), d_dout = device(dout);
  cu::Buffer<bf16> d_out(T * M);
  cu::Buffer<float> d_rstd(T);
  auto d_dx = device(std::vector<float>(T * M, 0.1f)), d_dg = device(std::vector<float>(M, 0.2f));
  cu::rmsnorm_forward(ctx, d_out.data(), d_rstd.data(), d_x.data(), d_g.data(), T, M);
  cu::rmsnorm_backward(ctx, d_dx.data(), d_dg.data(), d_dout.data(), d_x.data(), d_g.data(),
                       d_rstd.data(), T, M);
  ctx.sync();
  CHECK(rel_error(as_f32(d_out.download()), out) < 1.0 / 256);
  CHECK(rel_error(d_rstd.download(), rstd) < 1e-5);
  CHECK(rel_error(d_dx.download(), dx) < 1e-5);
  CHECK(rel_error(d_dg.download(), dg) < 1e-5);
}

TEST_CASE("geglu and the expert activations, forward and backward") {
  cu::Context ctx;
  const int64_t n = 5000;
  const auto a0 = random_vec(n, 7), a1 = random_vec(n, 8), dh = random_vec(n, 9);
  std::vector<float> h(n), da0(n, 0.3f), da1(n, -0.3f);
  cpu::geglu_forward(h.data(), a0.data(), a1.data(), n);
  cpu::geglu_backward(da0.data(), da1.data(), dh.data(), a0.data(), a1.data(), n);
  auto d_a0 = device(a0), d_a1 = device(a1), d_dh = device(dh);
  cu::Buffer<bf16> d_h(n);
  auto d_da0 = device(std::vector<float>(n, 0.3f)), d_da1 = device(std::vector<float>(n, -0.3f));
  cu::geglu_forward(ctx, d_h.data(), d_a0.data(), d_a1.data(), n);
  cu::geglu_backward(ctx, d_da0.data(), d_da1.data(), d_dh.data(), d_a0.data(), d_a1.data(), n);
  ctx.sync();
  CHECK(rel_error(as_f32(d_h.download()), h) < 1.0 / 256);
  CHECK(rel_error(d_da0.download(), da0) < 1e-5);
  CHECK(rel_error(d_da1.download(), da1) < 1e-5);

  for (cpu::Act act : {cpu::Act::relu, cpu::Act::gelu}) {
    std::vector<float> y(n), dx(n, 0.1f);
    cpu::act_forward(y.data(), a0.data(), n, act);
    cpu::act_backward(dx.data(), dh.data(), a0.data(), n, act);
    cu::Buffer<bf16> d_y(n);
    auto d_dx = device(std::vector<float>(n, 0.1f));
    cu::act_forward(ctx, d_y.data(), d_a0.data(), n, act);
    cu::act_backward(ctx, d_dx.data(), d_dh.data(), d_a0.data(), n, act);
    ctx.sync();
    CHECK(rel_error(as_f32(d_y.download()), y) < 1.0 / 256);
    CHECK(rel_error(d_dx.download(), dx) < 1e-5);
  }
}

TEST_CASE("attention with relative bias, zero logit and segments, forward and backward") {
  cu::Context ctx;
  const int64_t B = 2, S = 150, nh = 3, dh = 16, ld = nh * dh;  // S > 128: every bucket used
  const auto q = random_vec(B * S * ld, 10, 0.3f), k = random_vec(B * S * ld, 11, 0.3f);
  const auto v = random_vec(B * S * ld, 12), rb = random_vec(nh * cpu::kRelposBuckets, 13, 0.5f);
  const auto dout = random_vec(B * S * ld, 14);
  std::vector<int32_t> seg(B * S);
  for (int64_t i = 0; i < B * S; i++) seg[i] = static_cast<int32_t>((i % S) / 40);  // documents of 40
  std::vector<float> out(B * S * ld), probs(B * nh * S * S), dq(B * S * ld, 0.1f), dk(B * S * ld, 0.2f),
      dv(B * S * ld, 0.3f), drb(nh * cpu::kRelposBuckets, 0.4f);
  cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(),
                         B, S, nh, dh);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), drb.data(), dout.data(), probs.data(),
                          q.data(), k.data(), v.data(), seg.data(), B, S, nh, dh);

  auto d_q = device(q), d_k = device(k), d_v = device(v), d_rb = device(rb), d_dout = device(dout);
  auto d_seg = device(seg);
  cu::Buffer<float> d_out(out.size()), d_probs(probs.size()), d_scratch(probs.size());
  auto d_dq = device(std::vector<float>(dq.size(), 0.1f)), d_dk = device(std::vector<float>(dk.size(), 0.2f));
  auto d_dv = device(std::vector<float>(dv.size(), 0.3f)), d_drb = device(std::vector<float>(drb.size(), 0.4f));
  cu::attention_forward(ctx, d_out.data(), d_probs.data(), d_q.data(), d_k.data(), d_v.data(),
                        d_rb.data(), d_seg.data(), B, S, nh, dh);
  cu::attention_backward(ctx, d_dq.data(), d_dk.data(), d_dv.data(), d_drb.data(), d_scratch.data(),
                         d_dout.data(), d_probs.data(), d_q.data(), d_k.data(), d_v.data(),
                         d_seg.data(), B, S, nh, dh);
  ctx.sync();
  CHECK(rel_error(d_out.download(), out) < 1e-5);
  CHECK(rel_error(d_probs.download(), probs) < 1e-5);
  CHECK(rel_error(d_dq.download(), dq) < 1e-5);
  CHECK(rel_error(d_dk.download(), dk) < 1e-5);
  CHECK(rel_error(d_dv.download(), dv) < 1e-5);
  CHECK(rel_error(d_drb.download(), drb) < 1e-5);
}

TEST_CASE("flash attention (no probabilities kept) equals the CPU's attention, forward and backward") {
  cu::Context ctx;
  for (int64_t dh : {16, 64}) {
    INFO("d_head " << dh);
    const int64_t B = 2, S = 200, nh = 2, ld = nh * dh;  // S not a multiple of the tiles; > 128
    const auto q = random_vec(B * S * ld, 20, 0.2f), k = random_vec(B * S * ld, 21, 0.2f);
    const auto v = random_vec(B * S * ld, 22), rb = random_vec(nh * cpu::kRelposBuckets, 23, 0.5f);
    const auto dout = random_vec(B * S * ld, 24);
    std::vector<int32_t> seg(B * S);
    for (int64_t i = 0; i < B * S; i++) seg[i] = static_cast<int32_t>((i % S) / 70);
    std::vector<float> out(B * S * ld), probs(B * nh * S * S), dq(B * S * ld, 0.1f), dk(B * S * ld, 0.2f),
        dv(B * S * ld, 0.3f), drb(nh * cpu::kRelposBuckets, 0.4f);
    cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(),
                           B, S, nh, dh);
    cpu::attention_backward(dq.data(), dk.data(), dv.data(), drb.data(), dout.data(), probs.data(),
                            q.data(), k.data(), v.data(), seg.data(), B, S, nh, dh);
    REQUIRE(cu::flash_attention_supports(dh));
    auto d_q = device(q), d_k = device(k), d_v = device(v), d_rb = device(rb), d_dout = device(dout);
    auto d_seg = device(seg);
    cu::Buffer<float> d_out(out.size()), d_lse(B * nh * S);
    auto d_dq = device(std::vector<float>(dq.size(), 0.1f)), d_dk = device(std::vector<float>(dk.size(), 0.2f));
    auto d_dv = device(std::vector<float>(dv.size(), 0.3f)), d_drb = device(std::vector<float>(drb.size(), 0.4f));
    cu::attention_flash_forward(ctx, d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), d_rb.data(),
                                d_seg.data(), B, S, nh, dh);
    cu::attention_flash_backward(ctx, d_dq.data(), d_dk.data(), d_dv.data(), d_drb.data(), d_dout.data(),
                                 d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), d_rb.data(),
                                 d_seg.data(), B, S, nh, dh);
    ctx.sync();
    CHECK(rel_error(d_out.download(), out) < 1e-5);
    CHECK(rel_error(d_dq.download(), dq) < 1e-4);
    CHECK(rel_error(d_dk.download(), dk) < 1e-4);
    CHECK(rel_error(d_dv.download(), dv) < 1e-4);
    CHECK(rel_error(d_drb.download(), drb) < 1e-4);
  }
}

TEST_CASE("softmax cross-entropy with z-loss, forward and backward") {
  cu::Context ctx;
  glam::Mesh mesh = glam::Mesh::single();
  const int64_t T = 45, V = 1000;
  const auto logits = random_vec(T * V, 15, 3.0f);
  std::vector<int32_t> targets(T);
  for (int64_t t = 0; t < T; t++) targets[t] = t % 7 == 3 ? -1 : static_cast<int32_t>((t * 131) % V);
  std::vector<float> lse(T), dlogits(T * V);
  const cpu::LossSums want = cpu::softmax_xent_forward(lse.data(), logits.data(), targets.data(), T, V, 0, mesh);
  cpu::softmax_xent_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), T, V, 0, 0.1f, 1e-4f);

  auto d_logits = device(logits);
  auto d_targets = device(targets);
  cu::Buffer<float> d_lse(T), d_dlogits(T * V);
  const cpu::LossSums got = cu::softmax_xent_forward(ctx, d_lse.data(), d_logits.data(), d_targets.data(),
                                                     T, V, 0, mesh);
  cu::softmax_xent_backward(ctx, d_dlogits.data(), d_logits.data(), d_lse.data(), d_targets.data(), T, V,
                            0, 0.1f, 1e-4f);
  ctx.sync();
  CHECK(got.count == want.count);
  CHECK(got.ce == Approx(want.ce).epsilon(1e-5));
  CHECK(got.z == Approx(want.z).epsilon(1e-5));
  CHECK(rel_error(d_lse.download(), lse) < 1e-5);
  CHECK(rel_error(d_dlogits.download(), dlogits) < 1e-5);
}

TEST_CASE("router: the GPU's gating decisions are the CPU's, for both second-choice policies") {
  cu::Context ctx;
  const int64_t E = 8, S = 64, G = 4, T = S * G, M = 24;
  for (cpu::SecondPolicy policy : {cpu::SecondPolicy::all, cpu::SecondPolicy::random}) {
    cpu::RouterOptions opt;
    opt.n_experts = E;
    opt.group_size = S;
    opt.capacity_factor = 1.0;  // tight: many drops, so the slot order matters
    opt.second = policy;
    opt.seed = 99;
    opt.token_offset = 1000;
    const auto logits = random_vec(T * E, 16, 2.0f);
    cpu::RoutingPlan want, got;
    cpu::router_forward(want, logits.data(), T, opt);
    cu::DeviceRouting dev;
    auto d_logits = device(logits);
    cu::router_forward(ctx, got, dev, d_logits.data(), T, opt);
    CHECK(got.expert == want.expert);
    CHECK(got.kept == want.kept);
    CHECK(got.slot == want.slot);
    CHECK(got.row == want.row);
    CHECK(got.expert_offset == want.expert_offset);
    CHECK(got.load_before == want.load_before);
    CHECK(got.dropped == want.dropped);
    CHECK(got.dropped > 0);
    CHECK(got.aux == Approx(want.aux).epsilon(1e-6));
    CHECK(dev.expert.download() == want.expert);
    CHECK(rel_error(dev.g.download(), want.g) < 1e-6);

    // dispatch -> combine and back, against the CPU on the same plan
    const int64_t rows = want.expert_offset[E];
    const auto x = round_bf16(random_vec(T * M, 17)), y = random_vec(rows * M, 18), dout = random_vec(T * M, 19);
    std::vector<float> expert_in(rows * M), out(T * M), dy(rows * M), dweight(T * 2), dx(T * M, 0.5f);
    cpu::dispatch_forward(expert_in.data(), x.data(), want, M);
    cpu::combine_forward(out.data(), y.data(), want, M);
    cpu::combine_backward(dy.data(), dweight.data(), dout.data(), y.data(), want, M);
    cpu::dispatch_backward(dx.data(), y.data(), want, M);
    auto d_x = device(as_bf16(x));
    auto d_y = device(y), d_dout = device(dout);
    cu::Buffer<bf16> d_expert_in(rows * M);
    cu::Buffer<float> d_out(T * M), d_dy(rows * M), d_dweight(T * 2);
    auto d_dx = device(std::vector<float>(T * M, 0.5f));
    cu::dispatch_forward(ctx, d_expert_in.data(), d_x.data(), dev.row.data(), T, M);
    cu::combine_forward(ctx, d_out.data(), d_y.data(), dev.row.data(), dev.g.data(), dev.kept.data(), T, M);
    cu::combine_backward(ctx, d_dy.data(), d_dweight.data(), d_dout.data(), d_y.data(), dev.row.data(),
                         dev.g.data(), dev.kept.data(), T, M, rows);
    cu::dispatch_backward(ctx, d_dx.data(), d_y.data(), dev.row.data(), T, M);
    ctx.sync();
    CHECK(as_f32(d_expert_in.download()) == expert_in);
    CHECK(rel_error(d_out.download(), out) < 1e-5);
    CHECK(rel_error(d_dy.download(), dy) < 1e-5);
    CHECK(rel_error(d_dweight.download(), dweight) < 1e-5);
    CHECK(rel_error(d_dx.download(), dx) < 1e-6);
  }
}

TEST_CASE("Adafactor on the GPU takes the CPU's steps (factored and full second moments)") {
  cu::Context ctx;
  glam::Mesh mesh = glam::Mesh::single();
  glam::ParamTable table;
  auto add = [&](const char* name, std::vector<int64_t> shape, uint64_t seed) {
    glam::Param p;
    p.name = name;
    p.shape = p.global_shape = shape;
    p.w = random_vec(p.size(), seed, 0.05f);
    p.g.assign(p.size(), 0.0f);
    table.params.push_back(p);
  };
  add("experts", {2, 160, 136}, 30);  // factored per leading index
  add("bias", {300}, 31);             // full second moment
  glam::AdafactorOptions opt;
  glam::Adafactor cpu_opt(table, opt);
  std::vector<cu::DeviceAdafactorSlot> slots;
  std::vector<cu::Buffer<float>> w;
  for (size_t i = 0; i < table.params.size(); i++) {
    slots.push_back(cu::make_slot(cpu_opt.slots()[i]));
    w.push_back(device(table.params[i].w));
  }
  REQUIRE(slots[0].factored);
  REQUIRE(!slots[1].factored);
  for (int64_t t = 0; t < 3; t++) {
    for (size_t i = 0; i < table.params.size(); i++) table.params[i].g = random_vec(table.params[i].size(), 40 + t * 7 + i);
    const double lr = 0.01, rho = 1.0 - std::pow(static_cast<double>(t + 1), -opt.decay_pow);
    for (size_t i = 0; i < table.params.size(); i++) {
      auto g = device(table.params[i].g);
      cu::adafactor_update(ctx, w[i].data(), g.data(), slots[i], table.params[i], rho, lr, opt, mesh);
    }
    cpu_opt.step(table, lr, t, mesh);
    for (size_t i = 0; i < table.params.size(); i++) {
      INFO(table.params[i].name << " after step " << t);
      CHECK(rel_error(w[i].download(), table.params[i].w) < 1e-6);
    }
    CHECK(rel_error(slots[0].vr, cpu_opt.slots()[0].vr) < 1e-6);
    CHECK(rel_error(slots[0].vc, cpu_opt.slots()[0].vc) < 1e-6);
    CHECK(rel_error(slots[1].v.download(), cpu_opt.slots()[1].v) < 1e-6);
  }
  // the global norm's sum of squares
  auto g0 = device(table.params[0].g);
  double want = 0.0;
  for (float x : table.params[0].g) want += static_cast<double>(x) * x;
  CHECK(cu::sum_squares(ctx, g0.data(), table.params[0].size()) == Approx(want).epsilon(1e-12));
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
