// cpu::gemm (gemm.h): the bf16 path against an independent reference, a plain
// double-precision triple loop over the operands rounded to bf16, for every
// transpose, alpha and beta, leading dimensions wider than the matrix, and empty
// shapes; the rounding itself; then the whole model in bf16 against fp32.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "glam/model/adafactor.h"
#include "glam/layers/cpu/gemm.h"
#include "glam/model/model.h"
#include "gradcheck.h"

using namespace glam;
using cpu::Precision;

namespace {

// C = alpha op(A) op(B) + beta C in double, A and B read through `round`.
template <class Round>
std::vector<double> reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const std::vector<float>& A, int64_t lda, const std::vector<float>& B, int64_t ldb,
                              float beta, const std::vector<float>& C, int64_t ldc, Round round,
                              std::vector<double>* abs_sum) {
  std::vector<double> out(C.begin(), C.end());
  if (abs_sum) abs_sum->assign(C.size(), 0.0);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0.0, s_abs = 0.0;
      for (int64_t k = 0; k < K; k++) {
        const double a = round(ta ? A[k * lda + i] : A[i * lda + k]);
        const double b = round(tb ? B[j * ldb + k] : B[k * ldb + j]);
        s += a * b;
        s_abs += std::fabs(a * b);
      }
      out[i * ldc + j] = alpha * s + beta * C[i * ldc + j];
      if (abs_sum) (*abs_sum)[i * ldc + j] = std::fabs(alpha) * s_abs + std::fabs(beta * C[i * ldc + j]);
    }
  return out;
}

}  // namespace

TEST_CASE("bf16 rounding is to nearest even, and keeps NaN and infinities") {
  CHECK(cpu::bf16_round(1.0f) == 1.0f);
  CHECK(cpu::bf16_round(1.0f + std::ldexp(1.0f, -8)) == 1.0f);                             // tie: to even
  CHECK(cpu::bf16_round(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.0f + std::ldexp(1.0f, -6));  // tie: up to even
  CHECK(cpu::bf16_round(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -12)) == 1.0f + std::ldexp(1.0f, -7));
  CHECK(cpu::bf16_round(-3.0f) == -3.0f);
  CHECK(std::isnan(cpu::bf16_round(std::numeric_limits<float>::quiet_NaN())));
  CHECK(cpu::bf16_round(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
  std::vector<uint16_t> bits(2);
  const float in[2] = {1.0f, -2.0f};
  cpu::to_bf16(bits.data(), in, 2);
  CHECK(bits[0] == 0x3f80);
  CHECK(bits[1] == 0xc000);
  // The vectorised packing (16 at a time where the CPU has AVX-512) against the
  // scalar rounding on random bit patterns: NaNs, infinities, denormals, ties.
  std::mt19937 rng(9);
  std::vector<float> x(100003);
  for (size_t i = 0; i < x.size(); i++) {
    uint32_t u = rng();
    if (i % 7 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exact ties
    if (i % 11 == 0) u |= 0x7f800000u;                // infinities and NaNs
    std::memcpy(&x[i], &u, 4);
  }
  std::vector<uint16_t> packed(x.size());
  cpu::to_bf16(packed.data(), x.data(), static_cast<int64_t>(x.size()));
  size_t mismatches = 0;
  for (size_t i = 0; i < x.size(); i++) {
    const float r = cpu::bf16_round(x[i]);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    if (static_cast<uint16_t>(u >> 16) != packed[i]) mismatches++;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("bf16 gemm equals a reference on bf16-rounded operands, every layout") {
  std::printf("  oneDNN bf16 matmul here: %s (native: %s)\n", cpu::bf16_implementation().c_str(),
              cpu::bf16_native() ? "yes" : "no, emulated");
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  double worst = 0.0, worst_fp32 = 0.0;
  int cases = 0;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float alpha : {1.0f, 0.37f})
        for (float beta : {0.0f, 1.0f, -0.5f})
          for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{7, 5, 3}, {33, 17, 65}, {64, 48, 200}}) {
            const int64_t pad = 3;  // every leading dimension is wider than its matrix
            const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            std::vector<float> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc);
            for (auto* v : {&A, &B, &C})
              for (float& x : *v) x = u(rng);
            std::vector<float> C16 = C, C32 = C;
            cpu::gemm(Precision::bf16, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C16.data(), ldc);
            cpu::gemm(Precision::fp32, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C32.data(), ldc);
            std::vector<double> scale;
            const auto ref = reference(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                                       [](float x) { return cpu::bf16_round(x); }, &scale);
            const auto ref32 = reference(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                                         [](float x) { return x; }, nullptr);
            for (int64_t i = 0; i < M; i++) {
              for (int64_t j = 0; j < N; j++) {
                const int64_t at = i * ldc + j;
                // fp32 sums of exact products: within K float roundings of the absolute sum
                const double err = std::fabs(C16[at] - ref[at]) / (scale[at] + 1e-30);
                worst = std::max(worst, err);
                worst_fp32 = std::max(worst_fp32, std::fabs(C32[at] - ref32[at]) / (scale[at] + 1e-30));
              }
              for (int64_t j = N; j < ldc; j++) {  // the padding is never written
                REQUIRE(C16[i * ldc + j] == C[i * ldc + j]);
              }
            }
            cases++;
          }
  std::printf("  %d layouts: bf16 gemm vs rounded reference %.2e, fp32 gemm vs reference %.2e (of sum |a b|)\n",
              cases, worst, worst_fp32);
  CHECK(worst < 2e-6);
  CHECK(worst_fp32 < 2e-6);
}

TEST_CASE("bf16 gemm called from inside a parallel region gives the serial result") {
  const int64_t M = 24, N = 20, K = 40;
  auto A = gradcheck::random_vec(M * K, 6), B = gradcheck::random_vec(K * N, 7);
  std::vector<float> serial(M * N);
  cpu::gemm(Precision::bf16, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, serial.data(), N);
  std::vector<std::vector<float>> out(4, std::vector<float>(M * N));
#pragma omp parallel for num_threads(4)
  for (int i = 0; i < 4; i++)
    cpu::gemm(Precision::bf16, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, out[i].data(), N);
  for (int i = 0; i < 4; i++)
    for (int64_t j = 0; j < M * N; j++) REQUIRE(out[i][j] == Approx(serial[j]).margin(1e-5));
}

TEST_CASE("bf16 gemm differs from fp32 by the operand rounding only, and handles empty shapes") {
  const int64_t M = 40, N = 30, K = 500;
  auto A = gradcheck::random_vec(M * K, 4), B = gradcheck::random_vec(K * N, 5);
  std::vector<float> C16(M * N), C32(M * N);
  cpu::gemm(Precision::bf16, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C16.data(), N);
  cpu::gemm(Precision::fp32, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C32.data(), N);
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < M * N; i++) {
    num += (C16[i] - C32[i]) * (C16[i] - C32[i]);
    den += C32[i] * C32[i];
  }
  const double rel = std::sqrt(num / den);
  std::printf("  bf16 vs fp32, K = %lld: relative RMS difference %.2e (bf16 unit roundoff 3.9e-3)\n",
              static_cast<long long>(K), rel);
  CHECK(rel > 1e-5);  // the operands really were rounded
  CHECK(rel < 8e-3);
  // K = 0: C = beta C; M = 0 or N = 0: nothing happens
  std::vector<float> c = {1.0f, 2.0f};
  cpu::gemm(Precision::bf16, false, false, 1, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.5f, c.data(), 2);
  CHECK(c == std::vector<float>{0.5f, 1.0f});
  cpu::gemm(Precision::bf16, false, false, 0, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f, c.data(), 2);
  CHECK(c == std::vector<float>{0.5f, 1.0f});
}

TEST_CASE("the model in bf16 follows the fp32 model: loss, gradients, 40 training steps") {
  Config cfg;
  cfg.model.vocab_size = 96;
  cfg.model.d_model = 32;
  cfg.model.n_layers = 2;
  cfg.model.n_heads = 2;
  cfg.model.d_head = 16;
  cfg.model.d_ff = 64;
  cfg.model.n_experts = 4;
  cfg.model.group_size = 32;
  cfg.model.seq_len = 32;
  cfg.train.batch_rows = 4;
  cfg.train.lr = 0.01;
  cfg.validate();
  Batch batch;
  batch.rows = 4;
  batch.seq_len = 32;
  for (int64_t t = 0; t < batch.n_tokens(); t++) {  // a learnable pattern: the next id is id + 1
    batch.ids.push_back(static_cast<int32_t>((t * 7) % 96));
    batch.targets.push_back(static_cast<int32_t>((t * 7 + 1) % 96));
    batch.segments.push_back(0);
  }
  Mesh mesh = Mesh::single();
  Config cfg16 = cfg;
  cfg16.train.cpu_precision = "bf16";
  Model m32(cfg, mesh), m16(cfg16, mesh);
  REQUIRE(m16.cpu_precision() == Precision::bf16);
  m32.params().zero_grad();
  m16.params().zero_grad();
  const LossParts l32 = m32.forward(batch), l16 = m16.forward(batch);
  m32.backward();
  m16.backward();
  std::printf("  loss fp32 %.6f bf16 %.6f\n", l32.loss, l16.loss);
  CHECK(l16.loss == Approx(l32.loss).epsilon(5e-3));
  CHECK(l16.loss != l32.loss);  // bf16 really ran
  double worst = 0.0;
  for (size_t i = 0; i < m32.params().params.size(); i++) {
    const auto& g32 = m32.params().params[i].g;
    const auto& g16 = m16.params().params[i].g;
    double num = 0.0, den = 0.0;
    for (size_t j = 0; j < g32.size(); j++) {
      num += (g16[j] - g32[j]) * (g16[j] - g32[j]);
      den += g32[j] * g32[j];
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    worst = std::max(worst, rel);
    INFO(m32.params().params[i].name);
    CHECK(rel < 5e-2);  // bf16 operands: ~0.4% per GEMM, compounded through 2 layers and back
  }
  std::printf("  gradients: worst relative RMS difference %.2e\n", worst);

  Adafactor o32(m32.params(), AdafactorOptions::from(cfg.train)), o16(m16.params(), AdafactorOptions::from(cfg.train));
  double last32 = 0.0, last16 = 0.0;
  for (int64_t step = 0; step < 40; step++) {
    for (auto [m, o, last] : {std::tuple<Model*, Adafactor*, double*>{&m32, &o32, &last32}, {&m16, &o16, &last16}}) {
      m->params().zero_grad();
      *last = m->forward(batch).ce;
      m->backward();
      o->step(m->params(), learning_rate(cfg.train, step + 1), step, mesh);
    }
  }
  std::printf("  after 40 steps: ce fp32 %.4f bf16 %.4f (from %.4f)\n", last32, last16, l32.ce);
  CHECK(last32 < 0.5 * l32.ce);
  CHECK(last16 < 0.5 * l32.ce);
  CHECK(std::fabs(last16 - last32) < 0.05 * l32.ce);
}
