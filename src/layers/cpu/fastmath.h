// exp and tanh in float, written so that a `#pragma omp simd` loop over them
// vectorises (no libm call, no branch): the fast CPU kernels (layers_fast.h)
// use them where libm's scalar expf/tanhf dominated the profile.
// Files that use them compile with -fno-trapping-math (CMakeLists.txt), without
// which GCC keeps the clamps as branches and does not vectorise.
// fast_exp: x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to r^7
// (relative error below 1e-7 on that interval), times 2^n built in the exponent
// bits. Inputs are clamped to [-87, 88]: exp(-87) ~ 1.6e-38 stands in for 0.
#pragma once
#include <cstdint>
#include <cstring>

namespace glam::cpu::fast {

#pragma omp declare simd
inline float fast_exp(float x) {
  x = x > -87.0f ? x : -87.0f;
  x = x < 88.0f ? x : 88.0f;
  // round to nearest by adding and subtracting 1.5 * 2^23 (no libm call)
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 split in two for accuracy
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error ~1e-7, exact limits +-1.
#pragma omp declare simd
inline float fast_tanh(float x) { return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f); }

}  // namespace glam::cpu::fast
