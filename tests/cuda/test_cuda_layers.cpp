// Every CUDA layer against the CPU reference (glam::cpu) on random inputs, forward
// and backward. Without a visible GPU the executable exits with 77, which CTest
// reports as SKIPPED. The same file also runs on the CPU emulation of CUDA
// (tests/cuda_emu: the cuda_emu_* tests, one Catch2 tag each), and there with
// every 1-D grid capped at GLAM_TEST_MAX_GRID_BLOCKS blocks ("[grid]").
// Every comparison prints its largest difference and its tolerance.
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
#include <cstdlib>
#include <cstring>
#include <string>

#include "glam/model/adafactor.h"
#include "glam/model/params.h"
#include <cstdio>
#include <random>
#include <vector>

#include "glam/layers/cuda/optimizer.h"
#include "glam/layers/cuda/routing.h"
#include "glam/layers/cuda/layers.h"
#include "glam/layers/cpu/layers.h"
#include "glam/mesh/mesh.h"
#include "glam/model/moe.h"

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

// max |got - want| / max(|want|, tiny); infinite if either holds a NaN where the
// other does not (the emulation's uninitialised memory reads as NaN).
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double err = 0.0, scale = 1e-12;
  for (size_t i = 0; i < want.size(); i++) {
    if (std::isnan(got[i]) != std::isnan(want[i])) return INFINITY;
    if (std::isnan(want[i])) continue;
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return err / scale;
}

// Checks rel_error(got, want) < tol, printing both.
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                  double tol) {
  const double err = rel_error(got, want);
  std::printf("  %-44s largest difference %.3g of the reference's scale (tolerance %.3g)\n", what.c_str(), err, tol);
  INFO(what << ": " << err << " >= " << tol);
  CHECK(err < tol);
}

template <typename T>
void expect_equal(const std::string& what, const std::vector<T>& got, const std::vector<T>& want) {
  size_t diff = got.size() == want.size() ? 0 : std::max(got.size(), want.size());
  for (size_t i = 0; i < std::min(got.size(), want.size()); i++) diff += !(got[i] == want[i]);
  std::printf("  %-44s %zu of %zu differ (tolerance 0)\n", what.c_str(), diff, want.size());
  INFO(what);
  CHECK(diff == 0);
}

// The same bits (run-to-run determinism).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <typename T>
cu::Buffer<T> device(const std::vector<T>& host) {
  cu::Buffer<T> b;
  b.upload(host);
  return b;
}

// An fp32 tensor view of a device buffer, and device memory for arenas.
glam::Tensor view(cu::Buffer<float>& b) {
  glam::Tensor t;
  t.ptr = b.data();
  t.device = glam::Device::cuda;
  t.ndim = 1;
  t.shape[0] = static_cast<int64_t>(b.size());
  return t;
}

class DeviceAllocator : public glam::Allocator {
 public:
  glam::Device device() const override { return glam::Device::cuda; }
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    cu::check(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
  }
  void deallocate(void* p) override { cudaFree(p); }
};

}  // namespace

TEST_CASE("matmul forward and backward: cuBLAS bf16 equals the CPU on the same bf16 inputs", "[gemm]") {
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
  expect_close("matmul out", d_out.download(), out, 1e-4);
  expect_close("matmul din", d_din.download(), din, 1e-4);
  expect_close("matmul dw", d_dw.download(), dw, 1e-4);
}

// Row-major C[m, n] = alpha op(A) op(B) + beta C in double, A, B and C with leading dimensions.
std::vector<float> gemm_reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                                  const std::vector<float>& A, int64_t lda, const std::vector<float>& B, int64_t ldb,
                                  float beta, std::vector<float> C, int64_t ldc) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double acc = 0.0;
      for (int64_t l = 0; l < k; l++)
        acc += static_cast<double>(ta ? A[l * lda + i] : A[i * lda + l]) * (tb ? B[j * ldb + l] : B[l * ldb + j]);
      float& c = C[i * ldc + j];
      c = static_cast<float>(alpha * acc + (beta == 0.0f ? 0.0 : beta * static_cast<double>(c)));
    }
  return C;
}

TEST_CASE("every GEMM mapping: transposes, strided operands, alpha and beta, fp32, logits, conversions",
          "[gemm][grid]") {
  cu::Context ctx;
  const int64_t m = 37, n = 29, k = 70, pad = 5;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 0.75f}) {
        const std::string what = std::string("gemm ") + (ta ? "T" : "N") + (tb ? "T" : "N") +
                                 (beta == 0.0f ? " beta 0" : " beta 0.75");
        const int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
        const auto A = round_bf16(random_vec((ta ? k : m) * lda, 60)), B = round_bf16(random_vec((tb ? n : k) * ldb, 61));
        const auto C0 = random_vec(m * ldc, 62);
        const auto want = gemm_reference(ta, tb, m, n, k, 0.5f, A, lda, B, ldb, beta, C0, ldc);
        auto d_A = device(as_bf16(A)), d_B = device(as_bf16(B));
        cu::Buffer<float> d_C(C0.size());  // beta = 0: C is garbage before (NaN in the emulation), never read
        if (beta != 0.0f) d_C.upload(C0);
        cu::gemm(ctx, ta, tb, m, n, k, 0.5f, d_A.data(), lda, d_B.data(), ldb, beta, d_C.data(), ldc);
        std::vector<float> got = d_C.download(), got_rows(m * n), want_rows(m * n);
        for (int64_t i = 0; i < m; i++)
          for (int64_t j = 0; j < n; j++) {
            got_rows[i * n + j] = got[i * ldc + j];
            want_rows[i * n + j] = want[i * ldc + j];
          }
        expect_close(what, got_rows, want_rows, 1e-5);
        if (beta != 0.0f) {  // the padding between rows is untouched
          for (int64_t i = 0; i < m; i++)
            for (int64_t j = n; j < ldc; j++) REQUIRE(got[i * ldc + j] == C0[i * ldc + j]);
        }
        // fp32 (the router's) on the same operands
        auto d_A32 = device(A), d_B32 = device(B);
        cu::Buffer<float> d_C32(C0.size());
        if (beta != 0.0f) d_C32.upload(C0);
        cu::gemm_f32(ctx, ta, tb, m, n, k, 0.5f, d_A32.data(), lda, d_B32.data(), ldb, beta, d_C32.data(), ldc);
        got = d_C32.download();
        for (int64_t i = 0; i < m; i++)
          for (int64_t j = 0; j < n; j++) got_rows[i * n + j] = got[i * ldc + j];
        expect_close("fp32 " + what, got_rows, want_rows, 1e-5);
      }

  // the tied output layer: logits = scale h emb^T, dh += scale dlogits emb, demb += scale dlogits^T h
  const int64_t T = 40, M = 48, Vl = 300;
  const float scale = 1.0f / std::sqrt(static_cast<float>(M));
  const auto h = round_bf16(random_vec(T * M, 63)), emb = round_bf16(random_vec(Vl * M, 64, 0.1f));
  const auto dlogits = round_bf16(random_vec(T * Vl, 65));
  std::vector<float> logits(T * Vl), dh(T * M, 0.25f), demb(Vl * M, -0.5f);
  cpu::logits_forward(logits.data(), h.data(), emb.data(), T, M, Vl, scale);
  cpu::logits_backward(dh.data(), demb.data(), dlogits.data(), h.data(), emb.data(), T, M, Vl, scale);
  auto d_h = device(as_bf16(h)), d_emb = device(as_bf16(emb)), d_dlogits = device(as_bf16(dlogits));
  cu::Buffer<float> d_logits(T * Vl);
  auto d_dh = device(std::vector<float>(T * M, 0.25f)), d_demb = device(std::vector<float>(Vl * M, -0.5f));
  cu::logits_forward(ctx, d_logits.data(), d_h.data(), d_emb.data(), T, M, Vl, scale);
  cu::logits_backward(ctx, d_dh.data(), d_demb.data(), d_dlogits.data(), d_h.data(), d_emb.data(), T, M, Vl, scale);
  ctx.sync();
  expect_close("logits forward", d_logits.download(), logits, 1e-4);
  expect_close("logits backward dh", d_dh.download(), dh, 1e-4);
  expect_close("logits backward demb", d_demb.download(), demb, 1e-4);

  // y += x, and the bf16 <-> fp32 conversions: cpu::to_bf16's rounding, bit for bit
  const int64_t nx = 3000;
  auto x = random_vec(nx, 66, 10.0f);
  x[0] = 0.0f; x[1] = -0.0f; x[2] = INFINITY; x[3] = -INFINITY; x[4] = 1.00390625f; x[5] = 1.01171875f;  // ties
  x[6] = 3.0e38f; x[7] = 1e-40f;  // overflow to inf, a denormal
  const auto y = random_vec(nx, 67);
  auto d_x = device(x), d_y = device(y);
  cu::add_into(ctx, d_y.data(), d_x.data(), nx);
  std::vector<float> sum(nx);
  for (int64_t i = 0; i < nx; i++) sum[i] = y[i] + x[i];
  std::vector<float> got_sum = d_y.download();
  for (int i = 2; i < 4; i++) got_sum[i] = sum[i] = 0.0f;  // inf - the same inf
  expect_close("add_into", got_sum, sum, 1e-7);
  std::vector<uint16_t> want_bits(nx);
  cpu::to_bf16(want_bits.data(), x.data(), nx);
  cu::Buffer<bf16> d_x16(nx);
  cu::Buffer<float> d_back(nx);
  cu::to_bf16(ctx, d_x16.data(), d_x.data(), nx);
  cu::to_f32(ctx, d_back.data(), d_x16.data(), nx);
  const auto x16 = d_x16.download();
  std::vector<uint16_t> got_bits(nx);
  std::memcpy(got_bits.data(), x16.data(), nx * sizeof(uint16_t));
  expect_equal("to_bf16 bits (cpu::to_bf16)", got_bits, want_bits);
  expect_equal("to_f32 of to_bf16", d_back.download(), round_bf16(x));
}

TEST_CASE("cuBLAS argument rules: the calls glam makes and the ones cuBLAS refuses", "[gemm]") {
  cu::Context ctx;
  const int m = 6, n = 5, k = 4;
  cu::Buffer<bf16> A(64), B(64);
  cu::Buffer<float> C(64), A32(64), B32(64);
  A.upload(as_bf16(random_vec(64, 70)));
  B.upload(as_bf16(random_vec(64, 71)));
  A32.upload(random_vec(64, 72));
  B32.upload(random_vec(64, 73));
  const float one = 1.0f, zero = 0.0f;
  auto gemm_ex = [&](cublasOperation_t ta, cublasOperation_t tb, int mm, int nn, int kk, int lda, int ldb, int ldc,
                     cudaDataType at = CUDA_R_16BF, cudaDataType bt = CUDA_R_16BF,
                     cublasComputeType_t ct = CUBLAS_COMPUTE_32F) {
    return cublasGemmEx(ctx.blas(), ta, tb, mm, nn, kk, &one, at == CUDA_R_32F ? static_cast<const void*>(A32.data())
                                                                                : A.data(),
                        at, lda, bt == CUDA_R_32F ? static_cast<const void*>(B32.data()) : B.data(), bt, ldb, &zero,
                        C.data(), CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT);
  };
  const auto N = CUBLAS_OP_N, T = CUBLAS_OP_T;
  CHECK(gemm_ex(N, N, m, n, k, m, k, m) == CUBLAS_STATUS_SUCCESS);
  CHECK(gemm_ex(T, T, m, n, k, k, n, m) == CUBLAS_STATUS_SUCCESS);
  CHECK(gemm_ex(N, N, m, n, k, m - 1, k, m) == CUBLAS_STATUS_INVALID_VALUE);  // lda < rows of A
  CHECK(gemm_ex(T, N, m, n, k, k - 1, k, m) == CUBLAS_STATUS_INVALID_VALUE);  // A^T stored k x m
  CHECK(gemm_ex(N, N, m, n, k, m, k - 1, m) == CUBLAS_STATUS_INVALID_VALUE);  // ldb < k
  CHECK(gemm_ex(N, T, m, n, k, m, n - 1, m) == CUBLAS_STATUS_INVALID_VALUE);  // B^T stored n x k
  CHECK(gemm_ex(N, N, m, n, k, m, k, m - 1) == CUBLAS_STATUS_INVALID_VALUE);  // ldc < m
  CHECK(gemm_ex(N, N, -1, n, k, m, k, m) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm_ex(static_cast<cublasOperation_t>(7), N, m, n, k, m, k, m) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm_ex(N, N, m, n, k, m, k, m, CUDA_R_16BF, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS);  // mixed operand types
  CHECK(gemm_ex(N, N, m, n, k, m, k, m, CUDA_R_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasSgemm(ctx.blas(), N, N, m, n, k, &one, A32.data(), m - 1, B32.data(), k, &zero, C.data(), m) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSgemm(ctx.blas(), N, N, 0, n, k, &one, A32.data(), 1, B32.data(), k, &zero, C.data(), 1) ==
        CUBLAS_STATUS_SUCCESS);  // lda, ldc >= max(1, 0)
#ifdef GLAM_CUDA_EMU
  // the emulation refuses operands outside device memory (the GPU would fault)
  std::vector<float> host(64);
  CHECK(cublasSgemm(ctx.blas(), N, N, m, n, k, &one, host.data(), m, B32.data(), k, &zero, C.data(), m) ==
        CUBLAS_STATUS_EXECUTION_FAILED);
  CHECK(cublasSgemm(ctx.blas(), N, N, m, n, 20, &one, A32.data(), m, B32.data(), 20, &zero, C.data(), m) ==
        CUBLAS_STATUS_EXECUTION_FAILED);  // A would be 6 x 20: past the allocation
#endif
  ctx.sync();
}

TEST_CASE("rmsnorm forward (bf16 out, fp32 statistics) and backward", "[norm_act][grid]") {
  cu::Context ctx;
  const int64_t T = 37, M = 200;
  const auto x = random_vec(T * M, 4), g = random_vec(M, 5), dout = random_vec(T * M, 6);
  std::vector<float> out(T * M), rstd(T), dx(T * M, 0.1f), dg(M, 0.2f);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), T, M);
  cpu::rmsnorm_backward(dx.data(), dg.data(), dout.data(), x.data(), g.data(), rstd.data(), T, M);

  auto d_x = device(x), d_g = device(g), d_dout = device(dout);
  cu::Buffer<bf16> d_out(T * M);
  cu::Buffer<float> d_rstd(T), d_out32(T * M);
  auto d_dx = device(std::vector<float>(T * M, 0.1f)), d_dg = device(std::vector<float>(M, 0.2f));
  cu::rmsnorm_forward(ctx, d_out.data(), d_rstd.data(), d_x.data(), d_g.data(), T, M, d_out32.data());
  cu::rmsnorm_backward(ctx, d_dx.data(), d_dg.data(), d_dout.data(), d_x.data(), d_g.data(),
                       d_rstd.data(), T, M);
  ctx.sync();
  expect_close("rmsnorm out (bf16)", as_f32(d_out.download()), out, 1.0 / 256);
  expect_close("rmsnorm out (fp32)", d_out32.download(), out, 1e-5);
  expect_close("rmsnorm rstd", d_rstd.download(), rstd, 1e-5);
  expect_close("rmsnorm dx", d_dx.download(), dx, 1e-5);
  expect_close("rmsnorm dg", d_dg.download(), dg, 1e-5);
}

TEST_CASE("geglu and the expert activations, forward and backward", "[norm_act][grid]") {
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
  expect_close("geglu h (bf16)", as_f32(d_h.download()), h, 1.0 / 256);
  expect_close("geglu da0", d_da0.download(), da0, 1e-5);
  expect_close("geglu da1", d_da1.download(), da1, 1e-5);

  for (cpu::Act act : {cpu::Act::relu, cpu::Act::gelu}) {
    const std::string name = act == cpu::Act::relu ? "relu" : "gelu";
    std::vector<float> y(n), dx(n, 0.1f);
    cpu::act_forward(y.data(), a0.data(), n, act);
    cpu::act_backward(dx.data(), dh.data(), a0.data(), n, act);
    cu::Buffer<bf16> d_y(n);
    auto d_dx = device(std::vector<float>(n, 0.1f));
    cu::act_forward(ctx, d_y.data(), d_a0.data(), n, act);
    cu::act_backward(ctx, d_dx.data(), d_dh.data(), d_a0.data(), n, act);
    ctx.sync();
    expect_close(name + " y (bf16)", as_f32(d_y.download()), y, 1.0 / 256);
    expect_close(name + " dx", d_dx.download(), dx, 1e-5);
  }
}

// The CPU's probabilities [B, nh, S, S] from its stats [B, nh, S, 2] = (m, 1/denominator):
// p_ij = exp(a_ij - m_i) / denominator_i on the keys i sees, a_ij = q_i.k_j + rb[h, bucket(i-j)].
std::vector<float> cpu_probabilities(const std::vector<float>& stats, const std::vector<float>& q,
                                     const std::vector<float>& k, const std::vector<float>& rb,
                                     const std::vector<int32_t>& seg, int64_t B, int64_t S, int64_t nh, int64_t dh) {
  const int64_t ld = nh * dh;
  std::vector<float> probs(B * nh * S * S, 0.0f);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++)
      for (int64_t i = 0; i < S; i++) {
        const float* stat = stats.data() + ((b * nh + h) * S + i) * 2;
        for (int64_t j = 0; j <= i; j++) {
          if (seg[b * S + j] != seg[b * S + i]) continue;
          double a = rb[h * cpu::kRelposBuckets + cpu::relpos_bucket(i - j)];
          const float *qi = q.data() + (b * S + i) * ld + h * dh, *kj = k.data() + (b * S + j) * ld + h * dh;
          for (int64_t d = 0; d < dh; d++) a += double(qi[d]) * kj[d];
          probs[((b * nh + h) * S + i) * S + j] = static_cast<float>(std::exp(a - stat[0]) * stat[1]);
        }
      }
  return probs;
}

// Attention (the reference kernels, or the fused ones) against the CPU on B = 2
// rows of S tokens: row 0 packs short documents (1 to 9 tokens), row 1 two long
// ones; S is not a multiple of any tile and > 128, so every bucket is used.
void check_attention(bool flash, int64_t dh, int64_t S, int64_t nh, bool twice) {
  cu::Context ctx;
  const std::string kind = std::string(flash ? "flash" : "reference") + " d_head " + std::to_string(dh) + ": ";
  const int64_t B = 2, ld = nh * dh;
  const float qk_scale = 0.6f / std::sqrt(static_cast<float>(dh));
  const auto q = random_vec(B * S * ld, 10 + dh, qk_scale), k = random_vec(B * S * ld, 11 + dh, qk_scale * 2.0f);
  const auto v = random_vec(B * S * ld, 12 + dh), rb = random_vec(nh * cpu::kRelposBuckets, 13, 0.5f);
  const auto dout = random_vec(B * S * ld, 14 + dh);
  std::vector<int32_t> seg(B * S);
  for (int64_t i = 0, doc = 0, left = 1; i < S; i++) {  // lengths 1, 2, ..., 9, 1, 2, ...
    if (left == 0) left = ++doc % 9 + 1;
    seg[i] = static_cast<int32_t>(doc);
    left--;
  }
  for (int64_t i = 0; i < S; i++) seg[S + i] = i < S - 37 ? 0 : 1;
  std::vector<float> out(B * S * ld), stats(B * nh * S * 2), dq(B * S * ld, 0.1f), dk(B * S * ld, 0.2f),
      dv(B * S * ld, 0.3f), drb(nh * cpu::kRelposBuckets, 0.4f);
  cpu::attention_forward(out.data(), stats.data(), q.data(), k.data(), v.data(), rb.data(), seg.data(), B, S, nh, dh);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), drb.data(), dout.data(), stats.data(), q.data(), k.data(),
                          v.data(), rb.data(), seg.data(), B, S, nh, dh);
  const std::vector<float> probs = flash ? std::vector<float>() : cpu_probabilities(stats, q, k, rb, seg, B, S, nh, dh);

  auto d_q = device(q), d_k = device(k), d_v = device(v), d_rb = device(rb), d_dout = device(dout);
  auto d_seg = device(seg);
  cu::Buffer<float> d_out(out.size()), d_probs(flash ? 0 : probs.size()), d_scratch(flash ? 0 : probs.size());
  cu::Buffer<float> d_lse(B * nh * S);
  std::vector<float> first_drb, first_dq;
  for (int run = 0; run < (twice ? 2 : 1); run++) {  // twice: the same bits
    auto d_dq = device(std::vector<float>(dq.size(), 0.1f)), d_dk = device(std::vector<float>(dk.size(), 0.2f));
    auto d_dv = device(std::vector<float>(dv.size(), 0.3f)), d_drb = device(std::vector<float>(drb.size(), 0.4f));
#ifdef GLAM_CUDA_EMU
    const auto& counters = glam::cuda::emu::emu_counters();
    const int64_t mallocs = counters.mallocs, syncs = counters.syncs();
#endif
    if (flash) {
      REQUIRE(cu::flash_attention_supports(dh));
      cu::attention_flash_forward(ctx, d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), d_rb.data(),
                                  d_seg.data(), B, S, nh, dh);
      cu::attention_flash_backward(ctx, d_dq.data(), d_dk.data(), d_dv.data(), d_drb.data(), d_dout.data(),
                                   d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), d_rb.data(),
                                   d_seg.data(), B, S, nh, dh);
    } else {
      cu::attention_forward(ctx, d_out.data(), d_probs.data(), d_q.data(), d_k.data(), d_v.data(), d_rb.data(),
                            d_seg.data(), B, S, nh, dh);
      cu::attention_backward(ctx, d_dq.data(), d_dk.data(), d_dv.data(), d_drb.data(), d_scratch.data(),
                             d_dout.data(), d_probs.data(), d_q.data(), d_k.data(), d_v.data(), d_seg.data(), B, S,
                             nh, dh);
    }
#ifdef GLAM_CUDA_EMU
    if (run == 1) {  // the second time round the context has every table and scratch buffer
      std::printf("  %-44s %lld allocations, %lld synchronisations (tolerance 0)\n", (kind + "again").c_str(),
                  static_cast<long long>(counters.mallocs - mallocs), static_cast<long long>(counters.syncs() - syncs));
      CHECK(counters.mallocs == mallocs);
      CHECK(counters.syncs() == syncs);
    }
#endif
    ctx.sync();
    if (run == 1) {
      CHECK(same_bits(d_drb.download(), first_drb));
      CHECK(same_bits(d_dq.download(), first_dq));
      break;
    }
    first_drb = d_drb.download();
    first_dq = d_dq.download();
    expect_close(kind + "out", d_out.download(), out, 1e-5);
    if (!flash) expect_close(kind + "probs", d_probs.download(), probs, 1e-5);
    expect_close(kind + "dq", first_dq, dq, 1e-4);
    expect_close(kind + "dk", d_dk.download(), dk, 1e-4);
    expect_close(kind + "dv", d_dv.download(), dv, 1e-4);
    expect_close(kind + "drb", first_drb, drb, 1e-4);
  }
  if (flash) {  // lse = m + log(denominator), zero logit included: the CPU's stats are (m, 1/denominator)
    std::vector<float> lse(B * nh * S);
    for (int64_t r = 0; r < B * nh * S; r++)
      lse[r] = static_cast<float>(stats[2 * r] - std::log(double(stats[2 * r + 1])));
    expect_close(kind + "lse", d_lse.download(), lse, 1e-4);
  }
}

TEST_CASE("reference attention (relative bias, zero logit, segments), forward and backward", "[attention]") {
  // sized for the CPU emulation: every bucket (S > 128) at d_head 16 only
  for (int64_t dh : {16, 32, 64, 128}) check_attention(false, dh, dh == 16 ? 133 : 100, 1, dh == 16);
}

TEST_CASE("flash attention at d_head 16 equals the CPU's attention", "[flash][grid]") {
  check_attention(true, 16, 200, 2, true);
}
TEST_CASE("flash attention at d_head 32 equals the CPU's attention", "[flash]") { check_attention(true, 32, 200, 2, true); }
TEST_CASE("flash attention at d_head 64 equals the CPU's attention", "[flash]") { check_attention(true, 64, 141, 2, true); }
TEST_CASE("flash attention at d_head 128 equals the CPU's attention", "[flash]") {
  check_attention(true, 128, 141, 2, true);
}

TEST_CASE("softmax cross-entropy with z-loss over a vocabulary shard (v0 > 0), forward and backward",
          "[loss][grid]") {
  cu::Context ctx;
  glam::Mesh mesh = glam::Mesh::single();
  const int64_t T = 45, V = 1000, v0 = 1000;  // this shard: [1000, 2000) of a 3000-token vocabulary
  const auto logits = random_vec(T * V, 15, 3.0f);
  std::vector<int32_t> targets(T);
  for (int64_t t = 0; t < T; t++) targets[t] = t % 7 == 3 ? -1 : static_cast<int32_t>((t * 131) % 3000);
  std::vector<float> lse(T), dlogits(T * V);
  const cpu::LossSums want = cpu::softmax_xent_forward(lse.data(), logits.data(), targets.data(), T, V, v0, mesh);
  cpu::softmax_xent_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), T, V, v0, 0.1f, 1e-4f);

  auto d_logits = device(logits);
  auto d_targets = device(targets);
  cu::Buffer<float> d_lse(T), d_dlogits(T * V);
  const cpu::LossSums got = cu::softmax_xent_forward(ctx, d_lse.data(), d_logits.data(), d_targets.data(),
                                                     T, V, v0, cu::ReduceModelRows{});
  cu::softmax_xent_backward(ctx, d_dlogits.data(), d_logits.data(), d_lse.data(), d_targets.data(), T, V,
                            v0, 0.1f, 1e-4f);
  ctx.sync();
  CHECK(got.count == want.count);
  expect_close("loss ce", {static_cast<float>(got.ce)}, {static_cast<float>(want.ce)}, 1e-5);
  expect_close("loss z", {static_cast<float>(got.z)}, {static_cast<float>(want.z)}, 1e-5);
  expect_close("loss lse", d_lse.download(), lse, 1e-5);
  expect_close("loss dlogits", d_dlogits.download(), dlogits, 1e-5);
}

TEST_CASE("embedding forward and backward over a vocabulary shard", "[embedding][grid]") {
  cu::Context ctx;
  const int64_t T = 300, M = 72, row0 = 300, rows = 500;  // this shard: ids [300, 800)
  const auto emb = random_vec(rows * M, 50), dout = random_vec(T * M, 51);
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; t++) ids[t] = static_cast<int32_t>((t * 7919) % 1200);  // repeats, outside ids
  std::vector<float> out(T * M), demb(rows * M, 0.5f);
  cpu::embedding_forward(out.data(), ids.data(), emb.data(), T, M, row0, rows);
  cpu::embedding_backward(demb.data(), dout.data(), ids.data(), T, M, row0, rows);
  auto d_emb = device(emb), d_dout = device(dout), d_demb = device(std::vector<float>(rows * M, 0.5f));
  auto d_ids = device(ids);
  cu::Buffer<float> d_out(T * M);
  cu::embedding_forward(ctx, d_out.data(), d_ids.data(), d_emb.data(), T, M, row0, rows);
  cu::embedding_backward(ctx, d_demb.data(), d_dout.data(), d_ids.data(), T, M, row0, rows);
  ctx.sync();
  expect_close("embedding out", d_out.download(), out, 1e-7);
  expect_close("embedding demb", d_demb.download(), demb, 1e-6);
}

TEST_CASE("router: the GPU's gating decisions are the CPU's (both policies, drops, no_drop, E up to 256), "
          "and dispatch / combine", "[router][grid]") {
  cu::Context ctx;
  const int64_t M = 24;
  struct Case { int64_t E, S, G; bool no_drop; };  // sized for the CPU emulation
  for (const Case c : {Case{8, 32, 4, false}, Case{64, 64, 2, false}, Case{256, 64, 2, false}, Case{8, 32, 2, true},
                       Case{256, 48, 1, true}})
    for (cpu::SecondPolicy policy : {cpu::SecondPolicy::all, cpu::SecondPolicy::random}) {
      const int64_t T = c.S * c.G, E = c.E;
      const std::string what = "E " + std::to_string(E) + (c.no_drop ? " no_drop" : "") +
                               (policy == cpu::SecondPolicy::all ? " second=all: " : " second=random: ");
      cpu::RouterOptions opt;
      opt.n_experts = E;
      opt.group_size = c.S;
      opt.capacity_factor = 1.0;  // tight: many drops, so the slot order matters
      opt.second = policy;
      opt.no_drop = c.no_drop;
      opt.seed = 99;
      opt.token_offset = 1000;
      const auto logits = random_vec(T * E, 16 + E, 2.0f);
      cpu::RoutingPlan want;
      cpu::router_forward(want, logits.data(), T, opt);
      // the decisions (router.cu), then the bookkeeping (routing.cu), on the device
      const int64_t S = c.no_drop ? T : c.S, G = T / S;
      auto d_logits = device(logits);
      cu::Buffer<float> gates(T * E), gg(T * 2), first_frac(G * E), mean_gate(G * E);
      cu::Buffer<int32_t> expert(T * 2), slot(T * 2), row(T * 2), count(G * E), before(G * E);
      cu::Buffer<uint8_t> kept(T * 2);
      cu::Buffer<int64_t> start(G * E), summary(3 * E + 3);
      cu::RoutingDevice dev{gates.data(), expert.data(), gg.data(), kept.data(), slot.data(), row.data(),
                            first_frac.data(), mean_gate.data(), count.data(), before.data(), start.data(),
                            summary.data()};
      std::vector<int64_t> host(3 * E + 3);
      cu::router_decide(ctx, dev, d_logits.data(), T, opt);
      cu::routing_bookkeeping(ctx, dev, host.data(), T, S, E, G, c.no_drop);
      ctx.sync();
      expect_equal(what + "expert", expert.download(), want.expert);
      expect_equal(what + "kept", kept.download(), want.kept);
      expect_equal(what + "slot", slot.download(), want.slot);
      expect_equal(what + "row", row.download(), want.row);
      expect_equal(what + "first_frac", first_frac.download(), want.first_frac);
      CHECK(std::vector<int64_t>(host.begin(), host.begin() + E + 1) == want.expert_offset);
      CHECK(std::vector<int64_t>(host.begin() + E + 1, host.begin() + 2 * E + 1) == want.load_before);
      CHECK(std::vector<int64_t>(host.begin() + 2 * E + 1, host.begin() + 3 * E + 1) == want.load_after);
      const int64_t dropped = host[3 * E + 1];
      double aux = 0.0;
      std::memcpy(&aux, &host[3 * E + 2], sizeof(double));
      CHECK(dropped == want.dropped);
      if (c.no_drop) CHECK(dropped == 0);
      if (E == 8 && !c.no_drop) CHECK(dropped > 0);
      CHECK(aux == Approx(want.aux).epsilon(1e-6));
      expect_close(what + "g", gg.download(), want.g, 1e-6);
      expect_close(what + "gates", gates.download(), want.gates, 1e-6);
      // the router's backward on these decisions
      const auto dw = random_vec(T * 2, 21 + E);
      std::vector<float> dlogits(T * E, 0.25f);
      cpu::router_backward(dlogits.data(), dw.data(), 0.3, want);
      auto d_dw = device(dw);
      auto d_dlogits = device(std::vector<float>(T * E, 0.25f));
      cu::router_backward(ctx, d_dlogits.data(), d_dw.data(), dev, 0.3, T, S, E, G);
      ctx.sync();
      expect_close(what + "router backward", d_dlogits.download(), dlogits, 1e-5);

      // dispatch -> combine and back, against the CPU on the same plan (on some of the plans)
      if (!(E == 8 || (E == 256 && !c.no_drop && policy == cpu::SecondPolicy::random))) continue;
      if (c.no_drop && policy == cpu::SecondPolicy::random) continue;
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
      cu::dispatch_forward(ctx, d_expert_in.data(), d_x.data(), row.data(), T, M);
      cu::combine_forward(ctx, d_out.data(), d_y.data(), row.data(), gg.data(), kept.data(), T, M);
      cu::combine_backward(ctx, d_dy.data(), d_dweight.data(), d_dout.data(), d_y.data(), row.data(),
                           gg.data(), kept.data(), T, M, rows);
      cu::dispatch_backward(ctx, d_dx.data(), d_y.data(), row.data(), T, M);
      ctx.sync();
      expect_equal(what + "dispatch", as_f32(d_expert_in.download()), expert_in);
      expect_close(what + "combine", d_out.download(), out, 1e-5);
      expect_close(what + "combine backward dy", d_dy.download(), dy, 1e-5);
      expect_close(what + "combine backward dweight", d_dweight.download(), dweight, 1e-5);
      expect_close(what + "dispatch backward", d_dx.download(), dx, 1e-6);
    }
}

TEST_CASE("Adafactor on the GPU takes the CPU's steps (factored and full second moments)", "[adafactor][grid]") {
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
  add("matrix", {300, 130}, 32);      // factored, more rows than a capped grid's threads
  add("bias", {300}, 31);             // full second moment
  glam::AdafactorOptions opt;
  glam::Adafactor cpu_opt(table, opt), gpu_host(table, opt);
  DeviceAllocator alloc;
  cu::DeviceAdafactor gpu_opt(table, opt, alloc);
  std::vector<cu::Buffer<float>> w, g;
  std::vector<glam::Tensor> wt, gt;
  for (size_t i = 0; i < table.params.size(); i++) {
    w.push_back(device(table.params[i].w));
    g.push_back(cu::Buffer<float>(table.params[i].size()));
    wt.push_back(view(w.back()));
    gt.push_back(view(g.back()));
  }
  for (int64_t t = 0; t < 3; t++) {
    for (size_t i = 0; i < table.params.size(); i++) {
      table.params[i].g = random_vec(table.params[i].size(), 40 + t * 7 + i);
      g[i].upload(table.params[i].g);
    }
    const double lr = 0.01;
    gpu_opt.step(ctx, table, wt, gt, lr, t, mesh, [](double*, int64_t) {});
    cpu_opt.step(table, lr, t, mesh);
    gpu_opt.store(gpu_host);
    const std::string step = " after step " + std::to_string(t);
    for (size_t i = 0; i < table.params.size(); i++)
      expect_close(table.params[i].name + " w" + step, w[i].download(), table.params[i].w, 1e-6);
    for (size_t i = 0; i < 2; i++) {
      expect_close(table.params[i].name + " vr" + step, gpu_host.slots()[i].vr, cpu_opt.slots()[i].vr, 1e-6);
      expect_close(table.params[i].name + " vc" + step, gpu_host.slots()[i].vc, cpu_opt.slots()[i].vc, 1e-6);
    }
    expect_close("bias v" + step, gpu_host.slots()[2].v, cpu_opt.slots()[2].v, 1e-6);
  }
  // the global gradient norm
  cu::Buffer<double> partial(cu::norm_partials()), sums(table.params.size());
  std::vector<double> host;
  glam::Tensor pt, st;
  pt.ptr = partial.data(); pt.dtype = glam::DType::f64; pt.ndim = 1; pt.shape[0] = cu::norm_partials();
  st.ptr = sums.data(); st.dtype = glam::DType::f64; st.ndim = 1; st.shape[0] = static_cast<int64_t>(table.params.size());
  const double got = cu::gradient_norm(ctx, table, gt, mesh, pt, st, host);
  const double want = glam::global_grad_norm(table, mesh);
  std::printf("  %-44s relative difference %.3g (tolerance 1e-12)\n", "gradient norm", std::fabs(got - want) / want);
  CHECK(got == Approx(want).epsilon(1e-12));
}

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device visible: skipped\n");
    return 77;
  }
  if (const char* cap = std::getenv("GLAM_TEST_MAX_GRID_BLOCKS")) {
    cu::set_max_grid_blocks(std::atoi(cap));
    std::printf("1-D grids capped at %d blocks\n", cu::max_grid_blocks());
  }
  MPI_Init(&argc, &argv);
  int rc = Catch::Session().run(argc, argv);
#ifdef GLAM_CUDA_EMU
  const auto& c = glam::cuda::emu::emu_counters();  // every device allocation was freed
  std::printf("device memory: %lld allocations, %lld frees, %lld bytes still allocated, peak %lld bytes\n",
              static_cast<long long>(c.mallocs), static_cast<long long>(c.frees),
              static_cast<long long>(c.bytes_in_use), static_cast<long long>(c.peak_bytes));
  if (c.mallocs != c.frees || c.bytes_in_use != 0) rc = 1;
#endif
  MPI_Finalize();
  return rc;
}
