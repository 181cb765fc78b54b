// Dispatch and combine: the permutation between token order [T, M] and the
// expert-major buffer [rows, M] that the router planned (rows of expert e are
// [offset[e], offset[e+1]), ordered by group then slot). Local data movement only;
// moving rows between ranks of the data axis is the mesh's job (mesh.h).
#include <cstring>

#include "glam/model/moe.h"

namespace glam::cpu {

void dispatch_forward(float* expert_in, const float* x, const RoutingPlan& plan, int64_t M) {
  for (int64_t t = 0; t < plan.T; t++)
    for (int k = 0; k < 2; k++) {
      int32_t r = plan.row[t * 2 + k];
      if (r >= 0) std::memcpy(expert_in + r * M, x + t * M, sizeof(float) * M);
    }
}

void dispatch_backward(float* dx, const float* dexpert_in, const RoutingPlan& plan, int64_t M) {
  for (int64_t t = 0; t < plan.T; t++)
    for (int k = 0; k < 2; k++) {
      int32_t r = plan.row[t * 2 + k];
      if (r < 0) continue;
      const float* d = dexpert_in + r * M;
      float* o = dx + t * M;
      for (int64_t i = 0; i < M; i++) o[i] += d[i];
    }
}

void combine_forward(float* out, const float* expert_out, const RoutingPlan& plan, int64_t M) {
  for (int64_t t = 0; t < plan.T; t++) {
    float* o = out + t * M;
    std::memset(o, 0, sizeof(float) * M);
    for (int k = 0; k < 2; k++) {
      int32_t r = plan.row[t * 2 + k];
      if (r < 0) continue;  // dropped: the token keeps only its residual for this choice
      const float w = plan.weight(t, k);
      const float* y = expert_out + r * M;
      for (int64_t i = 0; i < M; i++) o[i] += w * y[i];
    }
  }
}

void combine_backward(float* dexpert_out, float* dweight, const float* dout, const float* expert_out,
                      const RoutingPlan& plan, int64_t M) {
  for (int64_t t = 0; t < plan.T; t++)
    for (int k = 0; k < 2; k++) {
      int32_t r = plan.row[t * 2 + k];
      dweight[t * 2 + k] = 0.0f;
      if (r < 0) continue;
      const float w = plan.weight(t, k);
      const float* d = dout + t * M;
      const float* y = expert_out + r * M;
      float* dy = dexpert_out + r * M;
      float dot = 0.0f;
      for (int64_t i = 0; i < M; i++) { dot += d[i] * y[i]; dy[i] = w * d[i]; }
      dweight[t * 2 + k] = dot;
    }
}

}  // namespace glam::cpu
