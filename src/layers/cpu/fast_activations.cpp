// Fast GEGLU (reference: activations.cpp). gelu_tanh(x) =
// 0.5 x (1 + th), th = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3); its derivative
// reuses th: 0.5 (1 + th) + 0.5 x (1 - th^2) du/dx. One vectorised tanh per element.
#include "fastmath.h"
#include "glam/layers/cpu/layers_fast.h"

namespace glam::cpu::fast {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

#pragma omp declare simd
inline float tanh_of_u(float x) { return fast_tanh(kSqrt2OverPi * (x + kGeluC * x * x * x)); }
}  // namespace

void geglu_forward(float* h, const float* a0, const float* a1, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) h[i] = 0.5f * a0[i] * (1.0f + tanh_of_u(a0[i])) * a1[i];
}

void geglu_backward(float* da0, float* da1, const float* dh, const float* a0, const float* a1, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float x = a0[i], th = tanh_of_u(x);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
    da0[i] += dh[i] * a1[i] * grad;
    da1[i] += dh[i] * 0.5f * x * (1.0f + th);
  }
}

}  // namespace glam::cpu::fast
