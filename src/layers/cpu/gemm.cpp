// cpu::gemm: fp32 through OpenBLAS, bf16 through a oneDNN matmul primitive. The
// operands are rounded into packed bf16 scratch (op(A) and op(B) keep their
// storage order; the memory descriptors' strides express the transposes), and
// alpha and beta become oneDNN's output scale and sum post-op. Primitives are
// cached per shape; oneDNN JIT-compiles each one once (~0.2 ms). Where oneDNN has
// no bf16 matmul for the CPU (AVX2 and older), the operands are rounded to bf16
// values held in fp32 and multiplied by OpenBLAS: the same numbers (a product of
// two bf16 values is exact in fp32; sums are fp32 either way), at fp32 speed.
#include "glam/layers/cpu/gemm.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "glam/base/check.h"

namespace glam::cpu {

Precision parse_precision(const std::string& s, const std::string& what) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  throw UserError(what + " must be fp32 or bf16, got '" + s + "'");
}

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

namespace {

inline uint16_t round_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

void pack_row(uint16_t* d, const float* s, int64_t n) {
  for (int64_t c = 0; c < n; c++) d[c] = round_bits(s[c]);
}

// round_bits on 16 floats at a time (the build targets x86-64-v2; this one is
// chosen at run time on CPUs with AVX-512). GCC 12 warns falsely inside the
// intrinsics' headers (their "undefined" pass-through operands).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void pack_row_avx512(uint16_t* d, const float* s, int64_t n) {
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x400000);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(s + c));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
  pack_row(d + c, s + c, n - c);
}
#pragma GCC diagnostic pop

// dst[rows, cols] (packed) = bf16(src[rows, cols] with leading dimension ld).
void pack_bf16(uint16_t* dst, const float* src, int64_t rows, int64_t cols, int64_t ld) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (ld == cols) {  // contiguous: one long row, split over the threads
    cols *= rows;
    rows = 1;
  }
  const int64_t chunk = 16384;
  const int64_t pieces = (cols + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t i = 0; i < rows * pieces; i++) {
    const int64_t r = i / pieces, c0 = (i % pieces) * chunk, n = std::min(chunk, cols - c0);
    if (avx512) pack_row_avx512(dst + r * cols + c0, src + r * ld + c0, n);
    else pack_row(dst + r * cols + c0, src + r * ld + c0, n);
  }
}

struct Dnnl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, float, float>;  // ta tb M N K ldc alpha beta
  struct Entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };
  std::map<Key, Entry> cache;
  std::vector<uint16_t> a16, b16;
  std::vector<float> a_rounded, b_rounded;  // the fallback's operands
  int native = -1;                          // -1: not yet known; 0: no oneDNN bf16 matmul here
};

Dnnl& dnnl_state() {
  static Dnnl d;
  return d;
}

dnnl::matmul::primitive_desc matmul_desc(Dnnl& d, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                                         int64_t ldc, float alpha, float beta) {
  using dt = dnnl::memory::data_type;
  // Packed storage: A is [M,K] (or [K,M] when transposed), B is [K,N] (or [N,K]).
  const dnnl::memory::desc a({M, K}, dt::bf16, ta ? dnnl::memory::dims{1, M} : dnnl::memory::dims{K, 1});
  const dnnl::memory::desc b({K, N}, dt::bf16, tb ? dnnl::memory::dims{1, K} : dnnl::memory::dims{N, 1});
  const dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{ldc, 1});
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, d.engine);
}

// The primitive for this shape, JIT-compiled on first use.
const Dnnl::Entry& cached_matmul(Dnnl& d, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t ldc,
                                 float alpha, float beta) {
  const Dnnl::Key key{ta, tb, M, N, K, ldc, alpha, beta};
  auto it = d.cache.find(key);
  if (it == d.cache.end()) {
    if (d.cache.size() >= 4096) d.cache.clear();  // expert row counts vary; keep the cache bounded
    auto pd = matmul_desc(d, ta, tb, M, N, K, ldc, alpha, beta);
    it = d.cache.emplace(key, Dnnl::Entry{pd, dnnl::matmul(pd)}).first;
  }
  return it->second;
}

// The rounded operands of the fallback: dst[rows, cols] = bf16_round(src), packed.
void pack_rounded(std::vector<float>& dst, const float* src, int64_t rows, int64_t cols, int64_t ld) {
  dst.resize(static_cast<size_t>(rows * cols));
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[r * cols + c] = bf16_round(src[r * ld + c]);
}

bool has_native_bf16(Dnnl& d) {
  if (d.native < 0) {
    try {
      matmul_desc(d, false, false, 64, 64, 64, 64, 1.0f, 0.0f);
      d.native = 1;
    } catch (const dnnl::error&) {
      d.native = 0;
    }
  }
  return d.native == 1;
}

// bf16 numbers without oneDNN: operands rounded into a_buf and b_buf, OpenBLAS sums.
void gemm_rounded(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc, std::vector<float>& a_buf,
                  std::vector<float>& b_buf) {
  if (ta) pack_rounded(a_buf, A, K, M, lda);
  else pack_rounded(a_buf, A, M, K, lda);
  if (tb) pack_rounded(b_buf, B, N, K, ldb);
  else pack_rounded(b_buf, B, K, N, ldb);
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
              a_buf.data(), ta ? M : K, b_buf.data(), tb ? K : N, beta, C, ldc);
}

void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (omp_in_parallel()) {  // the shared oneDNN state is for serial callers; a thread gets its own buffers
    std::vector<float> a_buf, b_buf;
    gemm_rounded(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, a_buf, b_buf);
    return;
  }
  Dnnl& d = dnnl_state();
  if (!has_native_bf16(d)) {
    gemm_rounded(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, d.a_rounded, d.b_rounded);
    return;
  }
  const Dnnl::Entry& mm = cached_matmul(d, ta, tb, M, N, K, ldc, alpha, beta);
  d.a16.resize(static_cast<size_t>(M * K));
  d.b16.resize(static_cast<size_t>(K * N));
  if (ta) pack_bf16(d.a16.data(), A, K, M, lda);
  else pack_bf16(d.a16.data(), A, M, K, lda);
  if (tb) pack_bf16(d.b16.data(), B, N, K, ldb);
  else pack_bf16(d.b16.data(), B, K, N, ldb);
  dnnl::memory am(mm.pd.src_desc(), d.engine, d.a16.data()), bm(mm.pd.weights_desc(), d.engine, d.b16.data());
  dnnl::memory cm(mm.pd.dst_desc(), d.engine, C);  // C keeps its leading dimension
  mm.prim.execute(d.stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  d.stream.wait();
}

}  // namespace

void gemm(Precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C
    for (int64_t r = 0; r < M; r++)
      for (int64_t c = 0; c < N; c++) C[r * ldc + c] = beta == 0.0f ? 0.0f : beta * C[r * ldc + c];
    return;
  }
  if (p == Precision::fp32) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
    return;
  }
  gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void to_bf16(uint16_t* dst, const float* src, int64_t n) { pack_bf16(dst, src, 1, n, n); }

float bf16_round(float x) {
  const uint32_t u = static_cast<uint32_t>(round_bits(x)) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string bf16_implementation() {
  Dnnl& d = dnnl_state();
  if (!has_native_bf16(d)) return "none on this CPU: operands rounded to bf16, OpenBLAS sgemm";
  return matmul_desc(d, false, false, 256, 256, 256, 256, 1.0f, 0.0f).impl_info_str();
}

bool bf16_native() {
  if (!has_native_bf16(dnnl_state())) return false;
  const std::string impl = bf16_implementation();
  return impl.find("bf16") != std::string::npos || impl.find("amx") != std::string::npos;
}

}  // namespace glam::cpu
