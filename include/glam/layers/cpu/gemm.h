// The CPU GEMM every large matmul of the model goes through, in one of two
// precisions (`[train] cpu_precision`):
//   fp32: OpenBLAS cblas_sgemm, the reference.
//   bf16: both operands rounded to bfloat16 (round to nearest even), products
//         summed in fp32 into an fp32 C (oneDNN matmul, AVX512-BF16 / AMX where the
//         CPU has them). The master weights, gradients, optimizer state, norm
//         statistics, softmaxes and the router stay fp32, as on the CUDA backend.
// The attention score GEMMs and the router always use fp32.
#pragma once
#include <cstdint>
#include <string>

namespace glam::cpu {

enum class Precision { fp32, bf16 };

// "fp32" | "bf16"; anything else is a UserError naming `what` (a flag or key).
Precision parse_precision(const std::string& s, const std::string& what);
const char* precision_name(Precision p);

// C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C, row-major with leading
// dimensions, exactly as cblas_sgemm(CblasRowMajor, ...). Threads with OpenMP
// inside. Meant for serial callers: inside a parallel region bf16 takes the
// rounded-operand path (same numbers, no oneDNN), so it stays thread-safe.
void gemm(Precision p, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Rounds n floats to bfloat16 bits (nearest even; NaN stays NaN).
void to_bf16(uint16_t* dst, const float* src, int64_t n);
float bf16_round(float x);  // x rounded to the nearest bfloat16, as a float

// What oneDNN runs bf16 matmuls with on this CPU, e.g. "brg:avx512_core_bf16", and
// whether that uses the CPU's own bf16 instructions (else bf16 is emulated, slower).
std::string bf16_implementation();
bool bf16_native();

}  // namespace glam::cpu
