// Fast output softmax, cross-entropy and z-loss (reference: loss.cpp): the same
// passes, with the row max, sum and exp of each row as vectorised loops.
#include <algorithm>
#include <cmath>
#include <vector>

#include "fastmath.h"
#include "glam/layers/cpu/layers_fast.h"
#include "glam/mesh/mesh.h"

namespace glam::cpu::fast {

LossSums softmax_xent_forward(float* lse, const float* logits, const int32_t* targets, int64_t T,
                              int64_t Vl, int64_t v0, const Mesh& mesh) {
  std::vector<float> row_max(T), row_sum(T), target_logit(T, 0.0f);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * Vl;
    float m = l[0];
#pragma omp simd reduction(max : m)
    for (int64_t v = 1; v < Vl; v++) m = std::max(m, l[v]);
    row_max[t] = m;
  }
  mesh.allreduce_max_model(row_max.data(), T);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * Vl;
    const float m = row_max[t];
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < Vl; v++) s += fast_exp(l[v] - m);
    row_sum[t] = s;
    const int64_t c = targets[t] - v0;
    if (targets[t] >= 0 && c >= 0 && c < Vl) target_logit[t] = l[c];
  }
  mesh.allreduce_sum_model(row_sum.data(), T);
  mesh.allreduce_sum_model(target_logit.data(), T);
  return loss_sums(lse, row_max.data(), row_sum.data(), target_logit.data(), targets, T);
}

void softmax_xent_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; t++) {
    float* d = dlogits + t * Vl;
    if (targets[t] < 0) {
      std::fill(d, d + Vl, 0.0f);
      continue;
    }
    const float* l = logits + t * Vl;
    const float coef = ce_scale + z_scale * 2.0f * lse[t], m = lse[t];
#pragma omp simd
    for (int64_t v = 0; v < Vl; v++) d[v] = coef * fast_exp(l[v] - m);
    const int64_t c = targets[t] - v0;
    if (c >= 0 && c < Vl) d[c] -= ce_scale;
  }
}

}  // namespace glam::cpu::fast
