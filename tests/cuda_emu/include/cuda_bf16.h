// bfloat16 of the emulated CUDA (tests/cuda_emu): the storage type and the
// conversions glam uses. __float2bfloat16 rounds as cpu::to_bf16 (gemm.cpp),
// bit for bit: to nearest even, NaN kept (quieted, sign and payload top bits).
#pragma once
#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

struct __nv_bfloat16_raw { unsigned short x; };

inline unsigned short __glam_emu_float2bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<unsigned short>(u >> 16);
}

inline float __glam_emu_bf162float(unsigned short b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Trivially default-constructible like CUDA's (garbage until written); converts
// to and from float as CUDA's does without __CUDA_NO_BFLOAT16_CONVERSIONS__.
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  __nv_bfloat16(float f) : __x(__glam_emu_float2bf16_bits(f)) {}
  __nv_bfloat16(double f) : __x(__glam_emu_float2bf16_bits(static_cast<float>(f))) {}
  operator __nv_bfloat16_raw() const { return {__x}; }
  operator float() const { return __glam_emu_bf162float(__x); }
};
typedef __nv_bfloat16 nv_bfloat16;

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16_raw{b}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __ushort_as_bfloat16(__glam_emu_float2bf16_bits(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return __glam_emu_bf162float(h.__x); }
