// Fast experts (reference: experts.cpp): the same two GEMMs per expert; the
// activation is a vectorised loop, and the backward writes d h with beta = 0 and
// turns it into d pre in place, so no scratch is zeroed or allocated per expert.
#include <cblas.h>

#include "fastmath.h"
#include "glam/layers/cpu/layers_fast.h"

namespace glam::cpu::fast {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

void activation(float* y, const float* x, int64_t n, Act act) {
  if (act == Act::relu) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  } else {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.0f + fast_tanh(kSqrt2OverPi * (v + kGeluC * v * v * v)));
    }
  }
}

// d[i] = act'(x[i]) * d[i], in place.
void act_backward_inplace(float* d, const float* x, int64_t n, Act act) {
  if (act == Act::relu) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) d[i] = x[i] > 0.0f ? d[i] : 0.0f;
  } else {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float v = x[i], th = fast_tanh(kSqrt2OverPi * (v + kGeluC * v * v * v));
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * v * v);
      d[i] *= 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du;
    }
  }
}
}  // namespace

void experts_forward(float* y, float* pre, float* h, const float* x, const float* wi,
                     const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                     Act act, Precision p) {
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    matmul_forward(pre + r0 * H, x + r0 * M, wi + e * M * H, n, M, H, p);
    activation(h + r0 * H, pre + r0 * H, n * H, act);
    matmul_forward(y + r0 * M, h + r0 * H, wo + e * H * M, n, H, M, p);
  }
}

void experts_backward(float* dx, float* dwi, float* dwo, float* dh_scratch, const float* dy,
                      const float* x, const float* pre, const float* h, const float* wi,
                      const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                      Act act, Precision p) {
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    float* dh = dh_scratch + r0 * H;  // [n, H] = dy Wo^T, then d pre
    gemm(p, false, true, n, H, M, 1.0f, dy + r0 * M, M, wo + e * H * M, M, 0.0f, dh, H);
    matmul_backward(nullptr, dwo + e * H * M, dy + r0 * M, h + r0 * H, wo + e * H * M, n, H, M, p);
    act_backward_inplace(dh, pre + r0 * H, n * H, act);
    matmul_backward(dx + r0 * M, dwi + e * M * H, dh, x + r0 * M, wi + e * M * H, n, M, H, p);
  }
}

}  // namespace glam::cpu::fast
