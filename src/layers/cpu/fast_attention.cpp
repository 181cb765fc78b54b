// Fast causal attention (reference: attention.cpp). Same layout and GEMMs; the
// softmax and its backward visit only the keys a query may see. Within a packed
// row segments are runs, so the keys of query i are the contiguous range
// [first(i), i], first(i) = start of i's document; the bias of a distance comes
// from a per-head table rb[h, bucket(d)] laid out by d, and exp is vectorised.
// OpenMP runs the (b, h) blocks in parallel, each thread in its own [S, S] scratch;
// as in the reference only the softmax statistics [B, nh, S, 2] = (m, 1/denominator)
// are saved, and the backward rebuilds the probabilities with the forward's row
// functions, bit for bit the forward's.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "fastmath.h"
#include "glam/layers/cpu/layers_fast.h"

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

// Row i of P (length S) goes from raw scores q.k to probabilities in three steps,
// which the forward and the backward's rebuild share; the visible keys are [j0, i].
// Scores to logits; returns their max with the zero logit.
float add_bias(float* p, const float* bias_h, int64_t j0, int64_t i) {
  float m = 0.0f;  // the extra zero logit takes part in the max
#pragma omp simd reduction(max : m)
  for (int64_t j = j0; j <= i; j++) {
    p[j] += bias_h[i - j];
    m = std::max(m, p[j]);
  }
  return m;
}

// exp(a - m) on the visible keys; returns the denominator, zero logit included.
float exponentiate(float* p, float m, int64_t j0, int64_t i) {
  float denom = fast_exp(-m);
#pragma omp simd reduction(+ : denom)
  for (int64_t j = j0; j <= i; j++) {
    p[j] = fast_exp(p[j] - m);
    denom += p[j];
  }
  return denom;
}

// Times 1/denominator on the visible keys, zeros outside [j0, i].
void normalise(float* p, float inv, int64_t j0, int64_t i, int64_t S) {
#pragma omp simd
  for (int64_t j = j0; j <= i; j++) p[j] *= inv;
  std::fill(p, p + j0, 0.0f);
  std::fill(p + i + 1, p + S, 0.0f);
}

// Forward: probabilities and stat = (m, 1/denominator).
void softmax_row(float* p, float* stat, const float* bias_h, int64_t j0, int64_t i, int64_t S) {
  const float m = add_bias(p, bias_h, j0, i);
  const float inv = 1.0f / exponentiate(p, m, j0, i);
  normalise(p, inv, j0, i, S);
  stat[0] = m;
  stat[1] = inv;
}

// Backward: the forward's probabilities again from the same scores and its stat.
void rebuild_row(float* p, const float* stat, const float* bias_h, int64_t j0, int64_t i, int64_t S) {
  add_bias(p, bias_h, j0, i);
  exponentiate(p, stat[0], j0, i);
  normalise(p, stat[1], j0, i, S);
}

}  // namespace

// OpenBLAS runs single-threaded inside the (b, h) loop, which OpenMP spreads over
// the cores; the previous BLAS thread count is restored on leaving.
class SerialBlas {
 public:
  SerialBlas() : threads_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~SerialBlas() { openblas_set_num_threads(threads_); }
 private:
  int threads_;
};

// One (b, h) at a time, so that its [S, S] block stays in cache from the scores to P V.
void attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                       const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                       int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int64_t> first = segment_starts(segments, B, S);
  const std::vector<float> bias = bias_by_distance(rb, nh, S);
  SerialBlas serial;
#pragma omp parallel
  {
    std::vector<float> P(S * S);  // [S, S] probabilities of this thread's (b, h)
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * nh; bh++) {
      const int64_t b = bh / nh, h = bh % nh, off = b * S * ld + h * dh;
      float* stat = stats + bh * S * 2;
      // scores P = Q K^T [S, S], then probabilities row by row, then out = P V [S, dh]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, q + off, ld, k + off, ld, 0.0f, P.data(),
                  S);
      for (int64_t i = 0; i < S; i++)
        softmax_row(P.data() + i * S, stat + 2 * i, bias.data() + h * S, first[b * S + i], i, S);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, P.data(), S, v + off, ld, 0.0f,
                  out + off, ld);
    }
  }
}

// dA_ij = p_ij (dP_ij - sum_k p_ik dP_ik) over the visible keys; drb[h, bucket(i-j)] += dA_ij.
// Each thread has its own [S, S] scratch (P and dA); each (b, h) writes its own relative-bias
// partial sums, added afterwards in (b, h) order so the result is the same for any
// thread count and schedule.
void attention_backward(float* dq, float* dk, float* dv, float* drb, const float* dout,
                        const float* stats, const float* q, const float* k, const float* v,
                        const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                        int64_t dh) {
  const int64_t ld = nh * dh;
  const std::vector<int64_t> first = segment_starts(segments, B, S);
  const std::vector<float> bias = bias_by_distance(rb, nh, S);
  std::vector<int> bucket(S);
  for (int64_t d = 0; d < S; d++) bucket[d] = relpos_bucket(d);
  std::vector<float> drb_parts(B * nh * kRelposBuckets, 0.0f);  // [B*nh, buckets]
  SerialBlas serial;
#pragma omp parallel
  {
    std::vector<float> Pbuf(S * S), dA(S * S);  // [S, S] each, this thread's (b, h)
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * nh; bh++) {
      const int64_t b = bh / nh, h = bh % nh, off = b * S * ld + h * dh;
      const float* stat = stats + bh * S * 2;
      float* P = Pbuf.data();
      // the forward's P again: scores Q K^T, then its rows from their stats
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, q + off, ld, k + off, ld, 0.0f, P, S);
      for (int64_t i = 0; i < S; i++)
        rebuild_row(P + i * S, stat + 2 * i, bias.data() + h * S, first[b * S + i], i, S);
      // dP = dO V^T ; dV += P^T dO
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, dh, 1.0f, dout + off, ld, v + off, ld, 0.0f,
                  dA.data(), S);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, P, S, dout + off, ld, 1.0f, dv + off, ld);
      float* drb_h = drb_parts.data() + bh * kRelposBuckets;
      for (int64_t i = 0; i < S; i++) {
        const int64_t j0 = first[b * S + i];
        const float* p = P + i * S;
        float* d = dA.data() + i * S;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = j0; j <= i; j++) dot += p[j] * d[j];
        for (int64_t j = j0; j <= i; j++) {
          d[j] = p[j] * (d[j] - dot);
          drb_h[bucket[i - j]] += d[j];
        }
        std::fill(d, d + j0, 0.0f);
        std::fill(d + i + 1, d + S, 0.0f);
      }
      // dQ += dA K ; dK += dA^T Q
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, dh, S, 1.0f, dA.data(), S, k + off, ld, 1.0f,
                  dq + off, ld);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, dh, S, 1.0f, dA.data(), S, q + off, ld, 1.0f,
                  dk + off, ld);
    }
  }
  for (int64_t bh = 0; bh < B * nh; bh++)
    for (int64_t x = 0; x < kRelposBuckets; x++)
      drb[(bh % nh) * kRelposBuckets + x] += drb_parts[bh * kRelposBuckets + x];
}

}  // namespace glam::cpu::fast
