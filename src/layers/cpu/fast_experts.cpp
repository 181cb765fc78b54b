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

// body(i) for i in [0, n), vectorised and over OpenMP threads: relu(i) or gelu(i).
template <typename Relu, typename Gelu>
void by_activation(int64_t n, Act act, const Relu& relu, const Gelu& gelu) {
  if (act == Act::relu) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) relu(i);
  } else {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) gelu(i);
  }
}

inline float tanh_of_u(float v) { return fast_tanh(kSqrt2OverPi * (v + kGeluC * v * v * v)); }

void activation(float* y, const float* x, int64_t n, Act act) {
  by_activation(
      n, act, [=](int64_t i) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; },
      [=](int64_t i) { y[i] = 0.5f * x[i] * (1.0f + tanh_of_u(x[i])); });
}

// d[i] = act'(x[i]) * d[i], in place.
void act_backward_inplace(float* d, const float* x, int64_t n, Act act) {
  by_activation(
      n, act, [=](int64_t i) { d[i] = x[i] > 0.0f ? d[i] : 0.0f; },
      [=](int64_t i) {
        const float v = x[i], th = tanh_of_u(v), du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * v * v);
        d[i] *= 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du;
      });
}
// f(e, r0, n) for each expert e with rows [r0, r0 + n) of the dispatched buffer
// (offsets [E + 1] from the plan); an expert without rows costs nothing.
template <typename F>
void for_each_busy_expert(const std::vector<int64_t>& offsets, const F& f) {
  for (size_t e = 0; e + 1 < offsets.size(); e++)
    if (offsets[e + 1] > offsets[e]) f(static_cast<int64_t>(e), offsets[e], offsets[e + 1] - offsets[e]);
}
}  // namespace

void experts_forward(float* y, float* pre, float* h, const float* x, const float* wi,
                     const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                     Act act, Precision p) {
  for_each_busy_expert(offsets, [&](int64_t e, int64_t r0, int64_t n) {
    matmul_forward(pre + r0 * H, x + r0 * M, wi + e * M * H, n, M, H, p);
    activation(h + r0 * H, pre + r0 * H, n * H, act);
    matmul_forward(y + r0 * M, h + r0 * H, wo + e * H * M, n, H, M, p);
  });
}

void experts_backward(float* dx, float* dwi, float* dwo, float* dh_scratch, const float* dy,
                      const float* x, const float* pre, const float* h, const float* wi,
                      const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                      Act act, Precision p) {
  for_each_busy_expert(offsets, [&](int64_t e, int64_t r0, int64_t n) {
    float* dh = dh_scratch + r0 * H;  // [n, H] = dy Wo^T, then d pre
    gemm(p, false, true, n, H, M, 1.0f, dy + r0 * M, M, wo + e * H * M, M, 0.0f, dh, H);
    matmul_backward(nullptr, dwo + e * H * M, dy + r0 * M, h + r0 * H, wo + e * H * M, n, H, M, p);
    act_backward_inplace(dh, pre + r0 * H, n * H, act);
    matmul_backward(dx + r0 * M, dwi + e * M * H, dh, x + r0 * M, wi + e * M * H, n, M, H, p);
  });
}

}  // namespace glam::cpu::fast
