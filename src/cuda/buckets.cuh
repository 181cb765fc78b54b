// The relative-position bucket of every distance 0..S-1 on the device, and the
// distance range [lo[b], hi[b]) of each bucket (buckets are monotone in the
// distance), for the attention kernels (attention.cu, flash_attention.cu); and
// the last step of the bias gradient both compute.
#pragma once
#include <vector>

#include "glam/cuda/layers.h"
#include "launch.cuh"

namespace glam::cuda {

struct BucketTables {
  Buffer<int> of_distance, lo, hi;
  explicit BucketTables(int64_t S) {
    std::vector<int> table(S), l(cpu::kRelposBuckets, 0), r(cpu::kRelposBuckets, 0);
    for (int64_t d = 0; d < S; d++) table[d] = cpu::relpos_bucket(d);
    for (int64_t d = S - 1; d >= 0; d--) l[table[d]] = static_cast<int>(d);
    for (int64_t d = 0; d < S; d++) r[table[d]] = static_cast<int>(d + 1);
    of_distance.upload(table);
    lo.upload(l);
    hi.upload(r);
  }
};

namespace {

// drb[h, bucket] += the partial sums partial[b, h, tile, bucket] of every (b, tile),
// added in that order (deterministic, no atomics): grid nh, a thread per bucket.
__global__ void attention_drb_reduce_kernel(float* drb, const float* partial, const int* lo, const int* hi,
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
  launch(attention_drb_reduce_kernel, dim3(static_cast<unsigned>(nh)), dim3(cpu::kRelposBuckets), 0, ctx.stream(),
         "attention_drb_reduce_kernel", drb, partial, t.lo.data(), t.hi.data(), B, nh, tiles);
}

}  // namespace

}  // namespace glam::cuda
