// CPU layers of GLaM: the readable fp32 reference. Conventions (llm.c style):
//  - arguments are outputs, then inputs, then sizes;
//  - forward overwrites its outputs; backward ACCUMULATES (+=) into input
//    gradients and weight gradients, so a residual stream or a tied weight
//    simply receives several contributions;
//  - T = tokens on this rank (B*S), row-major tensors, shapes in comments.
#pragma once
#include <cstdint>
#include <vector>

#include "glam/layers/cpu/gemm.h"

namespace glam::cpu {

// The large GEMMs below take the precision of their operands (gemm.h): fp32 is the
// reference; bf16 rounds both operands and sums in fp32.
// ---- matmul.cpp: out[T,N] = in[T,K] @ w[K,N] (BLAS) --------------------------
void matmul_forward(float* out, const float* in, const float* w, int64_t T, int64_t K, int64_t N,
                    Precision p = Precision::fp32);
// din[T,K] += dout @ w^T ; dw[K,N] += in^T @ dout  (either may be null)
void matmul_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                     int64_t T, int64_t K, int64_t N, Precision p = Precision::fp32);

// ---- embedding.cpp: out[T,M] = emb[ids[t] - row0] for ids in this vocab shard --
void embedding_forward(float* out, const int32_t* ids, const float* emb, int64_t T, int64_t M,
                       int64_t row0, int64_t rows);
void embedding_backward(float* demb, const float* dout, const int32_t* ids, int64_t T, int64_t M,
                        int64_t row0, int64_t rows);
// Tied output layer: logits[T, Vl] = (h[T, M] * scale) @ emb[Vl, M]^T, scale = M^-1/2.
void logits_forward(float* logits, const float* h, const float* emb, int64_t T, int64_t M,
                    int64_t Vl, float scale, Precision p = Precision::fp32);
void logits_backward(float* dh, float* demb, const float* dlogits, const float* h, const float* emb,
                     int64_t T, int64_t M, int64_t Vl, float scale, Precision p = Precision::fp32);

// ---- rmsnorm.cpp: y = x * rsqrt(mean(x^2) + eps) * g ---------------------------
constexpr float kRmsEps = 1e-6f;
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* g, int64_t T, int64_t M);
void rmsnorm_backward(float* dx, float* dg, const float* dout, const float* x, const float* g,
                      const float* rstd, int64_t T, int64_t M);

// ---- activations.cpp ----------------------------------------------------------
float gelu_tanh(float x);
float gelu_tanh_grad(float x);
// GEGLU gate: h[n] = gelu(a0[n]) * a1[n]
void geglu_forward(float* h, const float* a0, const float* a1, int64_t n);
void geglu_backward(float* da0, float* da1, const float* dh, const float* a0, const float* a1, int64_t n);
// Expert activation: relu or gelu_tanh, out-of-place.
enum class Act { relu, gelu };
void act_forward(float* y, const float* x, int64_t n, Act act);
void act_backward(float* dx, const float* dy, const float* x, int64_t n, Act act);

// ---- relpos.cpp: T5 buckets for the per-layer relative position bias ---------
constexpr int kRelposBuckets = 32;
int relpos_bucket(int64_t i_minus_j);

// ---- attention.cpp: causal attention over packed rows ------------------------
// q, k, v, out: [B, S, nh, dh] (= [T, nh*dh]); rb: [nh, 32] relative bias;
// segments: [B, S]; stats: [B, nh, S, 2] saved for backward, per query the row max
// m (zero logit included) and 1/denominator, p_ij = exp(a_ij - m) * (1/denominator).
// a[h,i,j] = q_i . k_j + rb[h, bucket(i-j)] (no 1/sqrt(dh)), j <= i, same segment;
// p = softmax with one extra logit fixed at 0 in the denominator. The backward
// recomputes a from q, k, rb and rebuilds p bit for bit from stats.
void attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                       const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                       int64_t dh);
// Incremental (KV-cache) attention of n new queries per row at positions
// [len, len + n): q [B, n, nh, dh]; kc, vc [B, cap, nh, dh] hold positions
// [0, len + n) (the new keys and values already written); one document per row.
void attention_decode(float* out, const float* q, const float* kc, const float* vc, const float* rb,
                      int64_t B, int64_t n, int64_t len, int64_t cap, int64_t nh, int64_t dh);
void attention_backward(float* dq, float* dk, float* dv, float* drb, const float* dout,
                        const float* stats, const float* q, const float* k, const float* v,
                        const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                        int64_t dh);

}  // namespace glam::cpu

namespace glam { struct Mesh; }

namespace glam::cpu {

// ---- loss.cpp: output softmax, cross-entropy and z-loss over a vocabulary shard --
// logits [T, Vl]: this rank's columns [v0, v0 + Vl) of the scaled logits;
// targets [T], -1 where no loss is taken. The max and sum of the log-softmax run
// over the model axis of the mesh (the vocabulary split). lse [T] is saved.
struct LossSums {
  double ce = 0.0;     // sum over valid targets of lse - logit[target]
  double z = 0.0;      // sum over valid targets of lse^2
  int64_t count = 0;   // valid targets on this rank's rows
};
// The last step every backend shares: lse [T] = row_max + log(row_sum) from
// statistics already reduced over the model axis, and the loss sums.
LossSums loss_sums(float* lse, const float* row_max, const float* row_sum, const float* target_logit,
                   const int32_t* targets, int64_t T);
LossSums softmax_xent_forward(float* lse, const float* logits, const int32_t* targets, int64_t T,
                              int64_t Vl, int64_t v0, const Mesh& mesh);
// dlogits [T, Vl] overwritten: ce_scale * (p - onehot) + z_scale * 2 * lse * p.
void softmax_xent_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale);

}  // namespace glam::cpu
