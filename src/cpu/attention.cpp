// Causal multi-head attention over packed rows, as GLaM: no 1/sqrt(d_head) scaling
// (Wq's init carries it), a per-layer relative position bias rb[h, bucket(i-j)],
// a segment mask (a token sees only earlier tokens of its own document), and one
// extra logit fixed at 0 in the softmax denominator (a query may attend "nowhere").
// Layout: q, k, v, out are [B, S, nh, dh]; per (b, h) the [S, dh] slices are
// strided with leading dimension nh*dh, which BLAS takes directly.
// probs [B, nh, S, S] (zeros where masked) is saved for the backward.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "glam/layers.h"

namespace glam::cpu {

namespace {

std::vector<int> bucket_table(int64_t S) {  // [S]: bucket of distance d = i - j
  std::vector<int> table(S);
  for (int64_t d = 0; d < S; d++) table[d] = relpos_bucket(d);
  return table;
}

// Turns raw scores q.k in row i of P (length S) into probabilities in place.
void masked_softmax_row(float* p, const float* rb_h, const int* bucket, const int32_t* seg,
                        int64_t i, int64_t S) {
  float m = 0.0f;  // the extra zero logit takes part in the max
  for (int64_t j = 0; j <= i; j++) {
    if (seg[j] != seg[i]) continue;
    p[j] += rb_h[bucket[i - j]];
    m = std::max(m, p[j]);
  }
  float denom = std::exp(-m);
  for (int64_t j = 0; j <= i; j++) {
    if (seg[j] != seg[i]) { p[j] = 0.0f; continue; }
    p[j] = std::exp(p[j] - m);
    denom += p[j];
  }
  float inv = 1.0f / denom;
  for (int64_t j = 0; j <= i; j++) p[j] *= inv;
  for (int64_t j = i + 1; j < S; j++) p[j] = 0.0f;
}

}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                       int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int> bucket = bucket_table(S);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++) {  // scores P = Q K^T  [S, S]
      const float* Q = q + b * S * ld + h * dh;
      const float* K = k + b * S * ld + h * dh;
      float* P = probs + (b * nh + h) * S * S;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, Q, ld, K, ld, 0.0f, P, S);
    }
#pragma omp parallel for collapse(2)
  for (int64_t bh = 0; bh < B * nh; bh++)
    for (int64_t i = 0; i < S; i++) {
      int64_t b = bh / nh, h = bh % nh;
      masked_softmax_row(probs + (bh * S + i) * S, rb + h * kRelposBuckets, bucket.data(),
                         segments + b * S, i, S);
    }
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++) {  // out = P V  [S, dh]
      const float* P = probs + (b * nh + h) * S * S;
      const float* V = v + b * S * ld + h * dh;
      float* O = out + b * S * ld + h * dh;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, P, S, V, ld, 0.0f, O, ld);
    }
}

// Softmax backward with the fixed zero logit: dA_ij = p_ij (dP_ij - sum_k p_ik dP_ik);
// the zero logit has no gradient, so the sum runs over real keys only.
void attention_backward(float* dq, float* dk, float* dv, float* drb, const float* dout,
                        const float* probs, const float* q, const float* k, const float* v,
                        const int32_t* segments, int64_t B, int64_t S, int64_t nh, int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int> bucket = bucket_table(S);
  std::vector<float> dA(S * S);  // [S, S] scratch, reused per (b, h)
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++) {
      const int64_t off = b * S * ld + h * dh;
      const float* P = probs + (b * nh + h) * S * S;
      // dP = dO V^T ; dV += P^T dO
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, dout + off, ld, v + off, ld,
                  0.0f, dA.data(), S);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, P, S, dout + off, ld, 1.0f,
                  dv + off, ld);
      float* drb_h = drb + h * kRelposBuckets;
      for (int64_t i = 0; i < S; i++) {
        const float* p = P + i * S;
        float* d = dA.data() + i * S;
        float dot = 0.0f;
        for (int64_t j = 0; j <= i; j++) dot += p[j] * d[j];
        for (int64_t j = 0; j <= i; j++) {
          d[j] = p[j] * (d[j] - dot);
          if (segments[b * S + j] == segments[b * S + i]) drb_h[bucket[i - j]] += d[j];
        }
        for (int64_t j = i + 1; j < S; j++) d[j] = 0.0f;
      }
      // dQ += dA K ; dK += dA^T Q
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, dA.data(), S, k + off, ld,
                  1.0f, dq + off, ld);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, dA.data(), S, q + off, ld,
                  1.0f, dk + off, ld);
    }
}

void attention_decode(float* out, const float* q, const float* kc, const float* vc, const float* rb,
                      int64_t B, int64_t n, int64_t len, int64_t cap, int64_t nh, int64_t dh) {
  const int64_t ld = nh * dh;
#pragma omp parallel for collapse(3)
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t h = 0; h < nh; h++) {
        const int64_t i = len + j;  // absolute position of this query
        const float* qi = q + (b * n + j) * ld + h * dh;
        std::vector<float> a(i + 1);
        float m = 0.0f;  // the extra zero logit takes part in the max
        for (int64_t t = 0; t <= i; t++) {
          const float* kt = kc + (b * cap + t) * ld + h * dh;
          float dot = 0.0f;
          for (int64_t d = 0; d < dh; d++) dot += qi[d] * kt[d];
          a[t] = dot + rb[h * kRelposBuckets + relpos_bucket(i - t)];
          m = std::max(m, a[t]);
        }
        float denom = std::exp(-m);
        for (int64_t t = 0; t <= i; t++) { a[t] = std::exp(a[t] - m); denom += a[t]; }
        float* o = out + (b * n + j) * ld + h * dh;
        for (int64_t d = 0; d < dh; d++) o[d] = 0.0f;
        for (int64_t t = 0; t <= i; t++) {
          const float p = a[t] / denom;
          const float* vt = vc + (b * cap + t) * ld + h * dh;
          for (int64_t d = 0; d < dh; d++) o[d] += p * vt[d];
        }
      }
}

}  // namespace glam::cpu
