// Causal multi-head attention over packed rows, as GLaM: no 1/sqrt(d_head) scaling
// (Wq's init carries it), a per-layer relative position bias rb[h, bucket(i-j)],
// a segment mask (a token sees only earlier tokens of its own document), and one
// extra logit fixed at 0 in the softmax denominator (a query may attend "nowhere").
// Layout: q, k, v, out are [B, S, nh, dh]; per (b, h) the [S, dh] slices are
// strided with leading dimension nh*dh, which BLAS takes directly.
// Only the softmax statistics stats [B, nh, S, 2] = (row max m, 1/denominator) are
// saved for the backward, which recomputes the scores of one (b, h) at a time and
// rebuilds the probabilities with the forward's own row functions, so that they are
// the forward's bit for bit. Each call holds [S, S] scratch for one (b, h) only.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

namespace {

std::vector<int> bucket_table(int64_t S) {  // [S]: bucket of distance d = i - j
  std::vector<int> table(S);
  for (int64_t d = 0; d < S; d++) table[d] = relpos_bucket(d);
  return table;
}

// The rows of P are turned from raw scores q.k into probabilities in three steps,
// which the forward and the backward's rebuild share.
struct Row {
  float* p;  // row i of P [S]
  const float* rb_h;
  const int* bucket;
  const int32_t* seg;
  int64_t i, S;
};

// Scores to logits (bias added on the visible keys); returns their max with the zero logit.
float add_bias(const Row& r) {
  float m = 0.0f;  // the extra zero logit takes part in the max
  for (int64_t j = 0; j <= r.i; j++) {
    if (r.seg[j] != r.seg[r.i]) continue;
    r.p[j] += r.rb_h[r.bucket[r.i - j]];
    m = std::max(m, r.p[j]);
  }
  return m;
}

// exp(a - m) on the visible keys, zeros elsewhere; returns the denominator, zero logit included.
float exponentiate(const Row& r, float m) {
  float denom = std::exp(-m);
  for (int64_t j = 0; j <= r.i; j++) {
    if (r.seg[j] != r.seg[r.i]) { r.p[j] = 0.0f; continue; }
    r.p[j] = std::exp(r.p[j] - m);
    denom += r.p[j];
  }
  for (int64_t j = r.i + 1; j < r.S; j++) r.p[j] = 0.0f;
  return denom;
}

void normalise(const Row& r, float inv) {
  for (int64_t j = 0; j <= r.i; j++) r.p[j] *= inv;
}

// Forward: probabilities and stat = (m, 1/denominator).
void softmax_row(const Row& r, float* stat) {
  const float m = add_bias(r);
  const float inv = 1.0f / exponentiate(r, m);
  normalise(r, inv);
  stat[0] = m;
  stat[1] = inv;
}

// Backward: the forward's probabilities again from the same scores and its stat.
void rebuild_row(const Row& r, const float* stat) {
  add_bias(r);
  exponentiate(r, stat[0]);
  normalise(r, stat[1]);
}

// P [S, S] = the probabilities of (b, h): scores Q K^T, then row by row.
template <class RowFn>
void probabilities(float* P, const float* q, const float* k, const float* rb_h, const int* bucket,
                   const int32_t* seg, int64_t S, int64_t ld, int64_t dh, RowFn row_fn) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, q, ld, k, ld, 0.0f, P, S);
#pragma omp parallel for
  for (int64_t i = 0; i < S; i++) row_fn(Row{P + i * S, rb_h, bucket, seg, i, S}, i);
}

}  // namespace

void attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                       const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                       int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int> bucket = bucket_table(S);
  std::vector<float> P(S * S);  // [S, S] probabilities of one (b, h)
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++) {
      const int64_t off = b * S * ld + h * dh;
      float* stat = stats + (b * nh + h) * S * 2;
      probabilities(P.data(), q + off, k + off, rb + h * kRelposBuckets, bucket.data(), segments + b * S, S, ld, dh,
                    [&](const Row& r, int64_t i) { softmax_row(r, stat + 2 * i); });
      // out = P V  [S, dh]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, P.data(), S, v + off, ld, 0.0f,
                  out + off, ld);
    }
}

// Softmax backward with the fixed zero logit: dA_ij = p_ij (dP_ij - sum_k p_ik dP_ik);
// the zero logit has no gradient, so the sum runs over real keys only.
void attention_backward(float* dq, float* dk, float* dv, float* drb, const float* dout,
                        const float* stats, const float* q, const float* k, const float* v,
                        const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                        int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int> bucket = bucket_table(S);
  std::vector<float> P(S * S), dA(S * S);  // [S, S] scratch, reused per (b, h)
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++) {
      const int64_t off = b * S * ld + h * dh;
      const float* stat = stats + (b * nh + h) * S * 2;
      probabilities(P.data(), q + off, k + off, rb + h * kRelposBuckets, bucket.data(), segments + b * S, S, ld, dh,
                    [&](const Row& r, int64_t i) { rebuild_row(r, stat + 2 * i); });
      // dP = dO V^T ; dV += P^T dO
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, dout + off, ld, v + off, ld,
                  0.0f, dA.data(), S);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, P.data(), S, dout + off, ld, 1.0f,
                  dv + off, ld);
      float* drb_h = drb + h * kRelposBuckets;
      for (int64_t i = 0; i < S; i++) {
        const float* p = P.data() + i * S;
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
