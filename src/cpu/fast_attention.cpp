// Fast causal attention (reference: attention.cpp). Same layout and GEMMs; the
// softmax and its backward visit only the keys a query may see. Within a packed
// row segments are runs, so the keys of query i are the contiguous range
// [first(i), i], first(i) = start of i's document; the bias of a distance comes
// from a per-head table rb[h, bucket(d)] laid out by d, and exp is vectorised.
// The row loops run under OpenMP; each thread sums its own relative-bias gradient.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "fastmath.h"
#include "glam/layers_fast.h"

namespace glam::cpu::fast {

namespace {

// [B, S]: the first position of the document of each position.
std::vector<int64_t> segment_starts(const int32_t* segments, int64_t B, int64_t S) {
  std::vector<int64_t> first(B * S);
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < S; i++)
      first[b * S + i] = i > 0 && segments[b * S + i] == segments[b * S + i - 1] ? first[b * S + i - 1] : i;
  return first;
}

// [nh, S]: bias of distance d for head h, rb[h, bucket(d)].
std::vector<float> bias_by_distance(const float* rb, int64_t nh, int64_t S) {
  std::vector<float> table(nh * S);
  for (int64_t d = 0; d < S; d++) {
    const int b = relpos_bucket(d);
    for (int64_t h = 0; h < nh; h++) table[h * S + d] = rb[h * kRelposBuckets + b];
  }
  return table;
}

// Row i of P: raw scores q.k in, probabilities out (zeros outside [j0, i]).
void softmax_row(float* p, const float* bias_h, int64_t j0, int64_t i, int64_t S) {
  float m = 0.0f;  // the extra zero logit takes part in the max
  for (int64_t j = j0; j <= i; j++) {
    p[j] += bias_h[i - j];
    m = std::max(m, p[j]);
  }
  float denom = fast_exp(-m);
#pragma omp simd reduction(+ : denom)
  for (int64_t j = j0; j <= i; j++) {
    p[j] = fast_exp(p[j] - m);
    denom += p[j];
  }
  const float inv = 1.0f / denom;
#pragma omp simd
  for (int64_t j = j0; j <= i; j++) p[j] *= inv;
  std::fill(p, p + j0, 0.0f);
  std::fill(p + i + 1, p + S, 0.0f);
}

}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                       int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int64_t> first = segment_starts(segments, B, S);
  const std::vector<float> bias = bias_by_distance(rb, nh, S);
  for (int64_t bh = 0; bh < B * nh; bh++) {  // scores P = Q K^T  [S, S]
    const int64_t b = bh / nh, h = bh % nh;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, q + b * S * ld + h * dh, ld,
                k + b * S * ld + h * dh, ld, 0.0f, probs + bh * S * S, S);
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bh = 0; bh < B * nh; bh++)
    for (int64_t i = 0; i < S; i++) {
      const int64_t b = bh / nh, h = bh % nh;
      softmax_row(probs + (bh * S + i) * S, bias.data() + h * S, first[b * S + i], i, S);
    }
  for (int64_t bh = 0; bh < B * nh; bh++) {  // out = P V  [S, dh]
    const int64_t b = bh / nh, h = bh % nh;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, probs + bh * S * S, S,
                v + b * S * ld + h * dh, ld, 0.0f, out + b * S * ld + h * dh, ld);
  }
}

// dA_ij = p_ij (dP_ij - sum_k p_ik dP_ik) over the visible keys; drb[h, bucket(i-j)] += dA_ij.
void attention_backward(float* dq, float* dk, float* dv, float* drb, const float* dout,
                        const float* probs, const float* q, const float* k, const float* v,
                        const int32_t* segments, int64_t B, int64_t S, int64_t nh, int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int64_t> first = segment_starts(segments, B, S);
  std::vector<int> bucket(S);
  for (int64_t d = 0; d < S; d++) bucket[d] = relpos_bucket(d);
  std::vector<float> dA(B * nh * S * S);  // [B, nh, S, S]
  for (int64_t bh = 0; bh < B * nh; bh++) {  // dP = dO V^T ; dV += P^T dO
    const int64_t off = (bh / nh) * S * ld + (bh % nh) * dh;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, dout + off, ld, v + off, ld, 0.0f,
                dA.data() + bh * S * S, S);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, probs + bh * S * S, S, dout + off,
                ld, 1.0f, dv + off, ld);
  }
#pragma omp parallel
  {
    std::vector<float> drb_local(nh * kRelposBuckets, 0.0f);
#pragma omp for collapse(2) schedule(static)
    for (int64_t bh = 0; bh < B * nh; bh++)
      for (int64_t i = 0; i < S; i++) {
        const int64_t b = bh / nh, h = bh % nh, j0 = first[b * S + i];
        const float* p = probs + (bh * S + i) * S;
        float* d = dA.data() + (bh * S + i) * S;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = j0; j <= i; j++) dot += p[j] * d[j];
        float* drb_h = drb_local.data() + h * kRelposBuckets;
        for (int64_t j = j0; j <= i; j++) {
          d[j] = p[j] * (d[j] - dot);
          drb_h[bucket[i - j]] += d[j];
        }
        std::fill(d, d + j0, 0.0f);
        std::fill(d + i + 1, d + S, 0.0f);
      }
#pragma omp critical
    for (int64_t x = 0; x < nh * kRelposBuckets; x++) drb[x] += drb_local[x];
  }
  for (int64_t bh = 0; bh < B * nh; bh++) {  // dQ += dA K ; dK += dA^T Q
    const int64_t off = (bh / nh) * S * ld + (bh % nh) * dh;
    const float* dAbh = dA.data() + bh * S * S;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, dAbh, S, k + off, ld, 1.0f,
                dq + off, ld);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, dAbh, S, q + off, ld, 1.0f,
                dk + off, ld);
  }
}

}  // namespace glam::cpu::fast
