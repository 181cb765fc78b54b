// KV-cache attention on the GPU: cpu::attention_decode (layers.h) for n new
// queries per row at positions [len, len + n) over the cached keys and values,
// and the append of the new keys and values into the cache.
#include "glam/layers/cuda/decode.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kDecodeThreads = 128;

// One block per (query j, row b, head h); dynamic shared memory holds the
// query's (len + j + 1) scores. bucket [cap]: relative-position bucket of each distance.
__global__ void attention_decode_kernel(float* out, const float* q, const float* kc, const float* vc,
                                        const float* rb, const int* bucket, int64_t n, int64_t len, int64_t cap,
                                        int64_t nh, int64_t dh) {
  GLAM_DYNAMIC_SHARED(float, scores);
  __shared__ float red[kDecodeThreads];
  const int64_t j = blockIdx.x, b = blockIdx.y, h = blockIdx.z, ld = nh * dh;
  const int64_t i = len + j;  // absolute position of this query
  const float* qi = q + (b * n + j) * ld + h * dh;
  float m = 0.0f;  // the extra zero logit takes part in the max
  for (int64_t t = threadIdx.x; t <= i; t += blockDim.x) {
    const float* kt = kc + (b * cap + t) * ld + h * dh;
    float dot = 0.0f;
    for (int64_t d = 0; d < dh; d++) dot += qi[d] * kt[d];
    const float a = dot + rb[h * cpu::kRelposBuckets + bucket[i - t]];
    scores[t] = a;
    m = fmaxf(m, a);
  }
  m = block_max(m, red);
  float part = 0.0f;
  for (int64_t t = threadIdx.x; t <= i; t += blockDim.x) {
    scores[t] = expf(scores[t] - m);
    part += scores[t];
  }
  const float denom = expf(-m) + block_sum(part, red);
  float* o = out + (b * n + j) * ld + h * dh;
  for (int64_t d = threadIdx.x; d < dh; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t t = 0; t <= i; t++) acc += scores[t] / denom * vc[(b * cap + t) * ld + h * dh + d];
    o[d] = acc;
  }
}

}  // namespace

void attention_decode(const Context& ctx, float* out, const float* q, const float* kc, const float* vc,
                      const float* rb, const int* bucket, int64_t B, int64_t n, int64_t len, int64_t cap,
                      int64_t nh, int64_t dh) {
  if (B == 0 || n == 0) return;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(B), static_cast<unsigned>(nh));
  const size_t shared = static_cast<size_t>(len + n) * sizeof(float);
  launch(attention_decode_kernel, grid, dim3(kDecodeThreads), shared, ctx.stream(), "attention_decode_kernel", out, q,
         kc, vc, rb, bucket, n, len, cap, nh, dh);
}

void kv_append(const Context& ctx, float* cache, const float* x, int64_t B, int64_t n, int64_t pos0, int64_t cap,
               int64_t A) {
  if (B == 0 || n == 0) return;
  for (int64_t b = 0; b < B; b++)  // one contiguous run of n positions per row
    GLAM_CHECK_CUDA(cudaMemcpyAsync(cache + (b * cap + pos0) * A, x + b * n * A, n * A * sizeof(float),
                          cudaMemcpyDeviceToDevice, ctx.stream()));
}

}  // namespace glam::cuda
