// KV-cache decoding on the GPU (src/layers/cuda/decode.cu): the counterparts of
// cpu::attention_decode and of appending new keys/values to the cache.
#pragma once
#include <cstdint>

#include "glam/layers/cuda/layers.h"

namespace glam::cuda {

// q [B, n, A]; kc, vc [B, cap, A] hold positions [0, len + n); bucket [cap] the
// relative-position bucket of each distance; out [B, n, A].
void attention_decode(const Context& ctx, float* out, const float* q, const float* kc, const float* vc,
                      const float* rb, const int* bucket, int64_t B, int64_t n, int64_t len, int64_t cap,
                      int64_t nh, int64_t dh);
// cache[b, pos0 + j, :] = x[b, j, :] for j < n: x [B, n, A], cache [B, cap, A].
void kv_append(const Context& ctx, float* cache, const float* x, int64_t B, int64_t n, int64_t pos0, int64_t cap,
               int64_t A);

}  // namespace glam::cuda
