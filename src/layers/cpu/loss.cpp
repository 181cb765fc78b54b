// Output softmax with cross-entropy and GLaM's z-loss, mean((logsumexp)^2), over
// the vocabulary shard of this rank. log-softmax statistics in fp32 per row, the
// row max and sum reduced over the model axis of the mesh.
#include <cmath>
#include <vector>

#include "glam/layers/cpu/layers.h"
#include "glam/mesh/mesh.h"

namespace glam::cpu {

LossSums loss_sums(float* lse, const float* row_max, const float* row_sum, const float* target_logit,
                   const int32_t* targets, int64_t T) {
  LossSums sums;
  for (int64_t t = 0; t < T; t++) {
    lse[t] = row_max[t] + std::log(row_sum[t]);
    if (targets[t] < 0) continue;
    sums.ce += static_cast<double>(lse[t]) - target_logit[t];
    sums.z += static_cast<double>(lse[t]) * lse[t];
    sums.count++;
  }
  return sums;
}

LossSums softmax_xent_forward(float* lse, const float* logits, const int32_t* targets, int64_t T,
                              int64_t Vl, int64_t v0, const Mesh& mesh) {
  std::vector<float> row_max(T), row_sum(T), target_logit(T, 0.0f);
#pragma omp parallel for
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * Vl;
    float m = l[0];
    for (int64_t v = 1; v < Vl; v++) m = std::max(m, l[v]);
    row_max[t] = m;
  }
  mesh.allreduce_max_model(row_max.data(), T);
#pragma omp parallel for
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * Vl;
    float s = 0.0f;
    for (int64_t v = 0; v < Vl; v++) s += std::exp(l[v] - row_max[t]);
    row_sum[t] = s;
    int64_t c = targets[t] - v0;
    if (targets[t] >= 0 && c >= 0 && c < Vl) target_logit[t] = l[c];
  }
  mesh.allreduce_sum_model(row_sum.data(), T);
  mesh.allreduce_sum_model(target_logit.data(), T);
  return loss_sums(lse, row_max.data(), row_sum.data(), target_logit.data(), targets, T);
}

void softmax_xent_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale) {
#pragma omp parallel for
  for (int64_t t = 0; t < T; t++) {
    float* d = dlogits + t * Vl;
    if (targets[t] < 0) {
      for (int64_t v = 0; v < Vl; v++) d[v] = 0.0f;
      continue;
    }
    const float* l = logits + t * Vl;
    const float coef = ce_scale + z_scale * 2.0f * lse[t];
    for (int64_t v = 0; v < Vl; v++) d[v] = coef * std::exp(l[v] - lse[t]);
    int64_t c = targets[t] - v0;
    if (c >= 0 && c < Vl) d[c] -= ce_scale;
  }
}

}  // namespace glam::cpu
