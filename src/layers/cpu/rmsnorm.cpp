// RMSNorm: y = x * rsqrt(mean(x^2) + 1e-6) * g, statistics in fp32.
// rstd [T] is saved by the forward for the backward.
#include <cmath>

#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* g, int64_t T, int64_t M) {
#pragma omp parallel for
  for (int64_t t = 0; t < T; t++) {
    const float* xt = x + t * M;
    float ss = 0.0f;
    for (int64_t i = 0; i < M; i++) ss += xt[i] * xt[i];
    float r = 1.0f / std::sqrt(ss / M + kRmsEps);
    rstd[t] = r;
    float* o = out + t * M;
    for (int64_t i = 0; i < M; i++) o[i] = xt[i] * r * g[i];
  }
}

// With xhat = x*r: dx = r * (dxhat - xhat * mean(dxhat * xhat)), dxhat = dout*g.
void rmsnorm_backward(float* dx, float* dg, const float* dout, const float* x, const float* g,
                      const float* rstd, int64_t T, int64_t M) {
  for (int64_t t = 0; t < T; t++) {
    const float* xt = x + t * M;
    const float* dt = dout + t * M;
    float r = rstd[t];
    float dot = 0.0f;
    for (int64_t i = 0; i < M; i++) {
      dot += dt[i] * g[i] * xt[i] * r;
      dg[i] += dt[i] * xt[i] * r;
    }
    dot /= M;
    float* dxt = dx + t * M;
    for (int64_t i = 0; i < M; i++) dxt[i] += r * (dt[i] * g[i] - xt[i] * r * dot);
  }
}

}  // namespace glam::cpu
