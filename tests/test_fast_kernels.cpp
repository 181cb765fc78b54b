// The fast CPU kernels (layers_fast.h) against the readable reference (layers.h):
// each kernel on random inputs at awkward sizes (odd lengths, packed rows with
// several documents), then the whole model, forward and backward, with one set
// and with the other. Largest differences and tolerances are printed.
#include <catch2/catch.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "../src/layers/cpu/fastmath.h"
#include "glam/layers/cpu/layers_fast.h"
#include "glam/mesh/mesh.h"
#include "glam/model/model.h"
#include "gradcheck.h"

using namespace glam;
using gradcheck::random_vec;

namespace {

// max |a - b| over the elements, relative to the reference's largest magnitude
// (so values near zero are judged on the tensor's scale); printed with the tolerance.
double compare(const std::string& what, const std::vector<float>& fast, const std::vector<float>& ref, double tol) {
  REQUIRE(fast.size() == ref.size());
  double worst = 0.0, scale = 1e-30;
  for (size_t i = 0; i < ref.size(); i++) {
    REQUIRE(std::isfinite(fast[i]));
    worst = std::max(worst, std::abs(double(fast[i]) - ref[i]));
    scale = std::max(scale, std::abs(double(ref[i])));
  }
  std::printf("  %-30s largest difference %.2e of the largest value (tolerance %.0e)\n", what.c_str(),
              worst / scale, tol);
  CHECK(worst / scale <= tol);
  return worst / scale;
}

// Segments of packed rows: documents of random lengths, restarting at 0 per row.
std::vector<int32_t> random_segments(int64_t B, int64_t S, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> seg(B * S);
  for (int64_t b = 0; b < B; b++) {
    int32_t s = 0;
    for (int64_t i = 0; i < S; i++) {
      if (i > 0 && rng() % 9 == 0) s++;
      seg[b * S + i] = s;
    }
  }
  return seg;
}

// A small model and one batch of packed rows with random ids and targets; with
// ignore_some, every 11th target is -1 (not scored).
struct ModelCase {
  Config cfg;
  Batch batch;
};
ModelCase model_case(int64_t vocab, int64_t d_model, int64_t heads, int64_t d_head, int64_t d_ff,
                     int64_t n_experts, int64_t seq_len, int64_t rows, uint64_t seed, bool ignore_some) {
  ModelCase c;
  c.cfg.model.vocab_size = vocab;
  c.cfg.model.d_model = d_model;
  c.cfg.model.n_layers = 2;
  c.cfg.model.n_heads = heads;
  c.cfg.model.d_head = d_head;
  c.cfg.model.d_ff = d_ff;
  c.cfg.model.n_experts = n_experts;
  c.cfg.model.group_size = seq_len;
  c.cfg.model.seq_len = seq_len;
  c.cfg.train.batch_rows = rows;
  c.cfg.validate();
  c.batch.rows = rows;
  c.batch.seq_len = seq_len;
  std::mt19937_64 rng(seed);
  c.batch.segments = random_segments(rows, seq_len, seed + 1);
  for (int64_t t = 0; t < c.batch.n_tokens(); t++) {
    c.batch.ids.push_back(static_cast<int32_t>(rng() % vocab));
    c.batch.targets.push_back(ignore_some && t % 11 == 5 ? -1 : static_cast<int32_t>(rng() % vocab));
  }
  return c;
}

}  // namespace

TEST_CASE("fast_exp and fast_tanh agree with libm") {
  double worst_exp = 0.0, worst_tanh = 0.0;
  for (float x = -80.0f; x < 80.0f; x += 0.0137f) {
    const double e = std::exp(double(x));
    worst_exp = std::max(worst_exp, std::abs(cpu::fast::fast_exp(x) - e) / e);
  }
  for (float x = -12.0f; x < 12.0f; x += 0.00071f)
    worst_tanh = std::max(worst_tanh, std::abs(cpu::fast::fast_tanh(x) - std::tanh(double(x))));
  std::printf("  fast_exp relative error %.2e, fast_tanh absolute error %.2e\n", worst_exp, worst_tanh);
  CHECK(worst_exp < 3e-7);
  CHECK(worst_tanh < 5e-7);
  CHECK(cpu::fast::fast_exp(-1000.0f) < 1e-37f);
  CHECK(cpu::fast::fast_tanh(50.0f) == 1.0f);
  CHECK(cpu::fast::fast_tanh(-50.0f) == -1.0f);
}

TEST_CASE("fast GEGLU equals the reference, forward and backward") {
  const int64_t n = 1037;
  auto a0 = random_vec(n, 1, 3.0f), a1 = random_vec(n, 2), dh = random_vec(n, 3);
  std::vector<float> h_ref(n), h_fast(n);
  cpu::geglu_forward(h_ref.data(), a0.data(), a1.data(), n);
  cpu::fast::geglu_forward(h_fast.data(), a0.data(), a1.data(), n);
  compare("geglu forward", h_fast, h_ref, 1e-5);
  auto da0_ref = random_vec(n, 4), da1_ref = random_vec(n, 5);  // backward accumulates
  auto da0_fast = da0_ref, da1_fast = da1_ref;
  cpu::geglu_backward(da0_ref.data(), da1_ref.data(), dh.data(), a0.data(), a1.data(), n);
  cpu::fast::geglu_backward(da0_fast.data(), da1_fast.data(), dh.data(), a0.data(), a1.data(), n);
  compare("geglu backward a0", da0_fast, da0_ref, 1e-5);
  compare("geglu backward a1", da1_fast, da1_ref, 1e-5);
}

TEST_CASE("fast softmax cross-entropy equals the reference") {
  const int64_t T = 37, V = 301;
  auto logits = random_vec(T * V, 6, 4.0f);
  std::vector<int32_t> targets(T);
  for (int64_t t = 0; t < T; t++) targets[t] = t % 7 == 3 ? -1 : static_cast<int32_t>((t * 13) % V);
  Mesh mesh = Mesh::single();
  std::vector<float> lse_ref(T), lse_fast(T);
  cpu::LossSums ref = cpu::softmax_xent_forward(lse_ref.data(), logits.data(), targets.data(), T, V, 0, mesh);
  cpu::LossSums fast = cpu::fast::softmax_xent_forward(lse_fast.data(), logits.data(), targets.data(), T, V, 0, mesh);
  compare("xent lse", lse_fast, lse_ref, 1e-6);
  CHECK(fast.count == ref.count);
  CHECK(fast.ce == Approx(ref.ce).epsilon(1e-6));
  CHECK(fast.z == Approx(ref.z).epsilon(1e-6));
  std::vector<float> d_ref(T * V), d_fast(T * V);
  cpu::softmax_xent_backward(d_ref.data(), logits.data(), lse_ref.data(), targets.data(), T, V, 0, 0.5f, 0.01f);
  cpu::fast::softmax_xent_backward(d_fast.data(), logits.data(), lse_ref.data(), targets.data(), T, V, 0, 0.5f, 0.01f);
  compare("xent dlogits", d_fast, d_ref, 1e-5);
}

TEST_CASE("fast attention equals the reference, with documents packed in rows") {
  const int64_t B = 3, S = 45, nh = 3, dh = 5, A = nh * dh;  // S > 16: logarithmic buckets too
  auto q = random_vec(B * S * A, 7), k = random_vec(B * S * A, 8), v = random_vec(B * S * A, 9);
  auto rb = random_vec(nh * cpu::kRelposBuckets, 10), dout = random_vec(B * S * A, 11);
  const std::vector<int32_t> seg = random_segments(B, S, 12);
  // stats [B, nh, S, 2]: (row max, 1/denominator); the fast one starts from garbage
  std::vector<float> out_ref(B * S * A), out_fast(B * S * A), st_ref(B * nh * S * 2), st_fast(B * nh * S * 2, 7.0f);
  cpu::attention_forward(out_ref.data(), st_ref.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(), B, S, nh,
                         dh);
  cpu::fast::attention_forward(out_fast.data(), st_fast.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(),
                               B, S, nh, dh);
  compare("attention stats", st_fast, st_ref, 1e-5);
  compare("attention out", out_fast, out_ref, 1e-5);
  std::vector<float> dq_ref = random_vec(B * S * A, 13), dk_ref = random_vec(B * S * A, 14);
  std::vector<float> dv_ref = random_vec(B * S * A, 15), drb_ref = random_vec(nh * cpu::kRelposBuckets, 16);
  auto dq_fast = dq_ref, dk_fast = dk_ref, dv_fast = dv_ref, drb_fast = drb_ref;
  cpu::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), drb_ref.data(), dout.data(), st_ref.data(),
                          q.data(), k.data(), v.data(), rb.data(), seg.data(), B, S, nh, dh);
  cpu::fast::attention_backward(dq_fast.data(), dk_fast.data(), dv_fast.data(), drb_fast.data(), dout.data(),
                                st_fast.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(), B, S, nh, dh);
  compare("attention dq", dq_fast, dq_ref, 1e-4);
  compare("attention dk", dk_fast, dk_ref, 1e-4);
  compare("attention dv", dv_fast, dv_ref, 1e-4);
  compare("attention drb", drb_fast, drb_ref, 1e-4);
}

// The backward rebuilds the probabilities from the saved stats; they must be the
// forward's bit for bit. Both are seen exactly with d_head = S, v = I and dout = I:
// the forward's out is P and the backward's dv (from 0) is P^T.
TEST_CASE("attention backward rebuilds the forward's probabilities bit for bit, both kernel sets") {
  const int64_t B = 2, S = 40, nh = 2, dh = S, A = nh * dh;
  auto q = random_vec(B * S * A, 40, 0.3f), k = random_vec(B * S * A, 41, 0.3f);
  auto rb = random_vec(nh * cpu::kRelposBuckets, 42);
  const std::vector<int32_t> seg = random_segments(B, S, 43);
  std::vector<float> eye(B * S * A, 0.0f);  // per (b, h) the [S, S] identity
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++)
      for (int64_t i = 0; i < S; i++) eye[(b * S + i) * A + h * dh + i] = 1.0f;
  for (const cpu::Kernels& kern : {cpu::Kernels::reference(), cpu::Kernels::fast()}) {
    const bool fast = kern.attention_forward == cpu::fast::attention_forward;
    INFO((fast ? "fast" : "reference") << " kernels");
    std::vector<float> P(B * S * A), stats(B * nh * S * 2);
    kern.attention_forward(P.data(), stats.data(), q.data(), k.data(), eye.data(), rb.data(), seg.data(), B, S, nh, dh);
    std::vector<float> dq(B * S * A, 0.0f), dk(B * S * A, 0.0f), PT(B * S * A, 0.0f), drb(rb.size(), 0.0f);
    kern.attention_backward(dq.data(), dk.data(), PT.data(), drb.data(), eye.data(), stats.data(), q.data(), k.data(),
                            eye.data(), rb.data(), seg.data(), B, S, nh, dh);
    int64_t differ = 0, nonzero = 0;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < nh; h++)
        for (int64_t i = 0; i < S; i++)
          for (int64_t j = 0; j < S; j++) {
            const float fwd = P[(b * S + i) * A + h * dh + j], bwd = PT[(b * S + j) * A + h * dh + i];
            differ += std::memcmp(&fwd, &bwd, sizeof fwd) != 0;
            nonzero += fwd != 0.0f;
          }
    std::printf("  %-30s %lld of %lld probabilities differ in any bit (tolerance 0)\n",
                fast ? "fast rebuild" : "reference rebuild", static_cast<long long>(differ),
                static_cast<long long>(nonzero));
    CHECK(differ == 0);
    CHECK(nonzero > B * nh * S);  // more than the diagonal: some documents are longer than one token
  }
}

TEST_CASE("fast experts equal the reference, an expert without rows included") {
  const int64_t M = 12, H = 20;
  const std::vector<int64_t> offsets = {0, 7, 7, 19, 24};  // expert 1 receives nothing
  const int64_t E = 4, rows = offsets[E];
  auto x = random_vec(rows * M, 30), wi = random_vec(E * M * H, 31), wo = random_vec(E * H * M, 32);
  auto dy = random_vec(rows * M, 33);
  for (cpu::Act act : {cpu::Act::relu, cpu::Act::gelu}) {
    const std::string name = act == cpu::Act::relu ? "experts relu " : "experts gelu ";
    std::vector<float> y_ref(rows * M), pre_ref(rows * H), h_ref(rows * H);
    std::vector<float> y_fast(rows * M), pre_fast(rows * H), h_fast(rows * H);
    cpu::experts_forward(y_ref.data(), pre_ref.data(), h_ref.data(), x.data(), wi.data(), wo.data(), offsets, M, H, act);
    cpu::fast::experts_forward(y_fast.data(), pre_fast.data(), h_fast.data(), x.data(), wi.data(), wo.data(), offsets,
                               M, H, act);
    compare(name + "y", y_fast, y_ref, 1e-5);
    auto dx_ref = random_vec(rows * M, 34), dwi_ref = random_vec(E * M * H, 35), dwo_ref = random_vec(E * H * M, 36);
    auto dx_fast = dx_ref, dwi_fast = dwi_ref, dwo_fast = dwo_ref;
    std::vector<float> s_ref(rows * H), s_fast(rows * H, 9.0f);  // fast must not rely on a zeroed scratch
    cpu::experts_backward(dx_ref.data(), dwi_ref.data(), dwo_ref.data(), s_ref.data(), dy.data(), x.data(),
                          pre_ref.data(), h_ref.data(), wi.data(), wo.data(), offsets, M, H, act);
    cpu::fast::experts_backward(dx_fast.data(), dwi_fast.data(), dwo_fast.data(), s_fast.data(), dy.data(), x.data(),
                                pre_ref.data(), h_ref.data(), wi.data(), wo.data(), offsets, M, H, act);
    compare(name + "dx", dx_fast, dx_ref, 1e-5);
    compare(name + "dwi", dwi_fast, dwi_ref, 1e-5);
    compare(name + "dwo", dwo_fast, dwo_ref, 1e-5);
  }
}

TEST_CASE("the model with fast kernels equals the model with reference kernels") {
  for (int64_t n_experts : {0, 4}) {
    const auto [cfg, batch] = model_case(97, 32, 2, 8, 48, n_experts, 40, 2, 21, true);
    Mesh mesh = Mesh::single();
    Model ref(cfg, mesh), fast(cfg, mesh);
    ref.use_reference_kernels(true);
    ref.params().zero_grad();
    fast.params().zero_grad();
    const LossParts lr = ref.forward(batch), lf = fast.forward(batch);
    ref.backward();
    fast.backward();
    std::printf("  n_experts %lld: loss reference %.7f fast %.7f\n", static_cast<long long>(n_experts), lr.loss, lf.loss);
    CHECK(lf.loss == Approx(lr.loss).epsilon(1e-6));
    CHECK(lf.aux == Approx(lr.aux).epsilon(1e-6));
    CHECK(lf.dropped == lr.dropped);
    for (size_t i = 0; i < ref.params().params.size(); i++)
      compare(ref.params().params[i].name + " grad", fast.params().params[i].g, ref.params().params[i].g, 1e-4);
  }
}

// Training must not depend on how many threads run it or how they are scheduled: an
// earlier fast attention backward summed per-thread partials of the relative-bias
// gradient in thread-completion order, and an MoE run then diverged on some machines.
TEST_CASE("fast kernels give bitwise equal gradients for 1 to 4 threads, run after run") {
  const auto [cfg, batch] = model_case(61, 24, 3, 8, 40, 4, 36, 5, 31, false);
  Mesh mesh = Mesh::single();
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> first;
  for (int threads : {1, 2, 3, 4, 4, 2}) {
    omp_set_num_threads(threads);
    Model model(cfg, mesh);
    model.params().zero_grad();
    model.forward(batch);
    model.backward();
    if (first.empty()) {
      for (auto& p : model.params().params) first.push_back(p.g);
      continue;
    }
    for (size_t i = 0; i < first.size(); i++) {
      INFO(model.params().params[i].name << " with " << threads << " threads");
      CHECK(model.params().params[i].g == first[i]);
    }
  }
  omp_set_num_threads(saved);
}
