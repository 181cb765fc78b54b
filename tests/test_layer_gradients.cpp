// Finite-difference checks of every CPU layer's backward against its forward.
// Each layer gets a scalar objective f = sum(out * R) for a fixed random R, so its
// backward is called with dout = R; tolerances and worst errors are printed.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <numeric>

#include "glam/layers/cpu/layers.h"
#include "glam/mesh/mesh.h"
#include "gradcheck.h"

using namespace glam;
using gradcheck::check;
using gradcheck::random_vec;

namespace {
double weighted_sum(const std::vector<float>& out, const std::vector<float>& R) { return gradcheck::dot(out, R); }
}  // namespace

TEST_CASE("matmul backward matches finite differences") {
  const int64_t T = 5, K = 7, N = 3;
  auto in = random_vec(T * K, 1), w = random_vec(K * N, 2), R = random_vec(T * N, 3);
  std::vector<float> out(T * N), din(T * K, 0.0f), dw(K * N, 0.0f);
  auto f = [&] { cpu::matmul_forward(out.data(), in.data(), w.data(), T, K, N); return weighted_sum(out, R); };
  cpu::matmul_backward(din.data(), dw.data(), R.data(), in.data(), w.data(), T, K, N);
  check("matmul/in", in, din, f);
  check("matmul/w", w, dw, f);
}

TEST_CASE("rmsnorm backward matches finite differences") {
  const int64_t T = 4, M = 16;
  auto x = random_vec(T * M, 4), g = random_vec(M, 5), R = random_vec(T * M, 6);
  std::vector<float> out(T * M), rstd(T), dx(T * M, 0.0f), dg(M, 0.0f);
  auto f = [&] { cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), T, M); return weighted_sum(out, R); };
  f();
  cpu::rmsnorm_backward(dx.data(), dg.data(), R.data(), x.data(), g.data(), rstd.data(), T, M);
  check("rmsnorm/x", x, dx, f, 1e-3);
  check("rmsnorm/g", g, dg, f, 1e-3);
}

TEST_CASE("geglu and expert activations match finite differences") {
  const int64_t n = 64;
  auto a0 = random_vec(n, 7), a1 = random_vec(n, 8), R = random_vec(n, 9);
  std::vector<float> h(n), da0(n, 0.0f), da1(n, 0.0f);
  auto f = [&] { cpu::geglu_forward(h.data(), a0.data(), a1.data(), n); return weighted_sum(h, R); };
  cpu::geglu_backward(da0.data(), da1.data(), R.data(), a0.data(), a1.data(), n);
  check("geglu/a0", a0, da0, f, 1e-3);
  check("geglu/a1", a1, da1, f, 1e-3);
  for (cpu::Act act : {cpu::Act::gelu, cpu::Act::relu}) {
    // relu: keep inputs away from the kink so +-eps never crosses it
    auto x = random_vec(n, 10);
    for (auto& v : x) if (std::abs(v) < 0.05f) v = 0.5f;
    std::vector<float> y(n), dx(n, 0.0f);
    auto fa = [&] { cpu::act_forward(y.data(), x.data(), n, act); return weighted_sum(y, R); };
    cpu::act_backward(dx.data(), R.data(), x.data(), n, act);
    check(act == cpu::Act::gelu ? "act/gelu" : "act/relu", x, dx, fa, 1e-3);
  }
}

TEST_CASE("attention backward matches finite differences, with segments and relative bias") {
  const int64_t B = 2, S = 20, nh = 2, dh = 4, T = B * S, A = nh * dh;
  auto q = random_vec(T * A, 11, 0.5f), k = random_vec(T * A, 12, 0.5f), v = random_vec(T * A, 13);
  auto rb = random_vec(nh * cpu::kRelposBuckets, 14, 0.5f), R = random_vec(T * A, 15);
  std::vector<int32_t> seg(T);
  for (int64_t t = 0; t < T; t++) seg[t] = (t % S) < 7 ? 0 : ((t % S) < 15 ? 1 : 2);  // 3 documents per row
  std::vector<float> out(T * A), stats(B * nh * S * 2);
  std::vector<float> dq(T * A, 0.0f), dk(T * A, 0.0f), dv(T * A, 0.0f), drb(rb.size(), 0.0f);
  auto f = [&] {
    cpu::attention_forward(out.data(), stats.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(), B, S, nh, dh);
    return weighted_sum(out, R);
  };
  f();
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), drb.data(), R.data(), stats.data(), q.data(), k.data(),
                          v.data(), rb.data(), seg.data(), B, S, nh, dh);
  check("attention/q", q, dq, f, 1e-3);
  check("attention/k", k, dk, f, 1e-3);
  check("attention/v", v, dv, f, 1e-3);
  check("attention/rel_bias", rb, drb, f, 1e-3);
}

// Without the probabilities, the mask is seen through the output: moving a key or
// value query i may not see leaves out_i as it was, bit for bit; moving one it sees
// changes it. With v = 1 everywhere out_i is the mass the real keys receive, which
// the zero logit keeps below 1.
TEST_CASE("attention never looks across documents or into the future") {
  const int64_t B = 1, S = 12, nh = 1, dh = 4, T = B * S;
  auto q = random_vec(T * dh, 16), k = random_vec(T * dh, 17), v = random_vec(T * dh, 18);
  std::vector<float> rb(cpu::kRelposBuckets, 0.0f), base(T * dh), out(T * dh), stats(S * 2);
  std::vector<int32_t> seg = {0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
  auto forward = [&](std::vector<float>& o, const std::vector<float>& kk, const std::vector<float>& vv) {
    cpu::attention_forward(o.data(), stats.data(), q.data(), kk.data(), vv.data(), rb.data(), seg.data(), B, S, nh,
                           dh);
  };
  forward(base, k, v);
  int64_t unchanged = 0, changed = 0;
  for (int64_t j = 0; j < S; j++) {
    auto k2 = k, v2 = v;
    for (int64_t d = 0; d < dh; d++) {
      k2[j * dh + d] += 0.75f;
      v2[j * dh + d] -= 1.25f;
    }
    for (int moved = 0; moved < 2; moved++) {  // the key, then the value
      forward(out, moved == 0 ? k2 : k, moved == 0 ? v : v2);
      for (int64_t i = 0; i < S; i++) {
        bool same = true;
        for (int64_t d = 0; d < dh; d++) same = same && out[i * dh + d] == base[i * dh + d];
        INFO("query " << i << ", key " << j << (moved == 0 ? " (key moved)" : " (value moved)"));
        if (j > i || seg[j] != seg[i]) {
          CHECK(same);
          unchanged++;
        } else {
          CHECK(!same);
          changed++;
        }
      }
    }
  }
  std::printf("  attention mask: %lld outputs unchanged by keys they may not see, %lld changed by keys they see\n",
              static_cast<long long>(unchanged), static_cast<long long>(changed));
  const std::vector<float> ones(T * dh, 1.0f);
  forward(out, k, ones);
  for (int64_t i = 0; i < S; i++) {
    INFO("query " << i);
    CHECK(out[i * dh] < 1.0f);  // the extra zero logit always keeps some mass
    CHECK(out[i * dh] > 0.0f);
    // and the zero logit takes the rest: exp(0 - m) / denominator, from the saved stats
    CHECK(out[i * dh] + std::exp(-stats[2 * i]) * stats[2 * i + 1] == Approx(1.0).epsilon(1e-5));
  }
}

TEST_CASE("softmax cross-entropy with z-loss matches finite differences") {
  const int64_t T = 6, V = 11;
  auto logits = random_vec(T * V, 19, 2.0f);
  std::vector<int32_t> targets = {3, 0, -1, 10, 5, 5};
  Mesh mesh = Mesh::single();
  std::vector<float> lse(T), dlogits(T * V);
  const double zw = 0.1;  // a large z weight so its gradient is visible
  auto f = [&] {
    cpu::LossSums s = cpu::softmax_xent_forward(lse.data(), logits.data(), targets.data(), T, V, 0, mesh);
    return (s.ce + zw * s.z) / s.count;
  };
  f();
  cpu::softmax_xent_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), T, V, 0, 1.0f / 5, zw / 5);
  check("softmax_xent/logits", logits, dlogits, f, 1e-3);
  for (int64_t v = 0; v < V; v++) CHECK(dlogits[2 * V + v] == 0.0f);  // no loss at target -1
}

TEST_CASE("tied embedding and output logits match finite differences") {
  const int64_t T = 5, M = 6, V = 9;
  auto emb = random_vec(V * M, 20), h = random_vec(T * M, 21), R = random_vec(T * V, 22), Rx = random_vec(T * M, 23);
  std::vector<int32_t> ids = {1, 8, 1, 0, 4};
  std::vector<float> logits(T * V), x(T * M), dh(T * M, 0.0f), demb(V * M, 0.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(M));
  auto f = [&] {
    cpu::logits_forward(logits.data(), h.data(), emb.data(), T, M, V, scale);
    cpu::embedding_forward(x.data(), ids.data(), emb.data(), T, M, 0, V);
    return weighted_sum(logits, R) + weighted_sum(x, Rx);
  };
  cpu::logits_backward(dh.data(), demb.data(), R.data(), h.data(), emb.data(), T, M, V, scale);
  cpu::embedding_backward(demb.data(), Rx.data(), ids.data(), T, M, 0, V);
  check("tied/embedding", emb, demb, f, 1e-3);
  check("tied/h", h, dh, f, 1e-3);
}
