// Pointwise activations: gelu (tanh approximation), GEGLU's gated product for the
// dense FFN, and the plain relu|gelu of the (un-gated) experts.
#include <cmath>

#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;
}  // namespace

float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kGeluC * x * x * x)));
}

float gelu_tanh_grad(float x) {
  float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  float th = std::tanh(u);
  float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

void geglu_forward(float* h, const float* a0, const float* a1, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) h[i] = gelu_tanh(a0[i]) * a1[i];
}

void geglu_backward(float* da0, float* da1, const float* dh, const float* a0, const float* a1, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) {
    da0[i] += dh[i] * a1[i] * gelu_tanh_grad(a0[i]);
    da1[i] += dh[i] * gelu_tanh(a0[i]);
  }
}

void act_forward(float* y, const float* x, int64_t n, Act act) {
  if (act == Act::relu) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  } else {
#pragma omp parallel for
    for (int64_t i = 0; i < n; i++) y[i] = gelu_tanh(x[i]);
  }
}

void act_backward(float* dx, const float* dy, const float* x, int64_t n, Act act) {
  if (act == Act::relu) {
    for (int64_t i = 0; i < n; i++) dx[i] += x[i] > 0.0f ? dy[i] : 0.0f;
  } else {
#pragma omp parallel for
    for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * gelu_tanh_grad(x[i]);
  }
}

}  // namespace glam::cpu
