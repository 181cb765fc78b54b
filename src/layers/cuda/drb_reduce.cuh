// The last step of the relative-bias gradient, shared by the reference and the
// fused attention: the partial sums per (b, h, query tile, bucket) added up in a
// fixed order.
#pragma once
#include "buckets.cuh"
#include "launch.cuh"

namespace glam::cuda {

namespace {

// drb[h, bucket] += the partial sums partial[b, h, tile, bucket] of every (b, tile),
// added in that order (deterministic, no atomics): grid nh, a thread per bucket.
__global__ void attention_backward_drb_reduce_kernel(float* drb, const float* partial, const int* lo, const int* hi,
                                                     int64_t B, int64_t nh, int64_t tiles) {
  const int64_t h = blockIdx.x;
  const int bk = threadIdx.x;
  if (bk >= cpu::kRelposBuckets || hi[bk] <= lo[bk]) return;  // no distance of this row length
  float s = 0.0f;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < tiles; t++) s += partial[((b * nh + h) * tiles + t) * cpu::kRelposBuckets + bk];
  drb[h * cpu::kRelposBuckets + bk] += s;
}

inline void reduce_drb(const Context& ctx, float* drb, const float* partial, const BucketTables& t, int64_t B,
                       int64_t nh, int64_t tiles) {
  launch(attention_backward_drb_reduce_kernel, dim3(static_cast<unsigned>(nh)), dim3(cpu::kRelposBuckets), 0,
         ctx.stream(), "attention_backward_drb_reduce_kernel", drb, partial, t.lo.data(), t.hi.data(), B, nh, tiles);
}

}  // namespace

}  // namespace glam::cuda
