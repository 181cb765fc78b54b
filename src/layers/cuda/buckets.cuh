// The relative-position bucket of every distance 0..S-1 on the device, and the
// distance range [lo[b], hi[b]) of each bucket (buckets are monotone in the
// distance), for the attention kernels (attention.cu, flash_attention.cu),
// built once per row length and kept by the Context (Context::buckets).
#pragma once
#include <vector>

#include "glam/layers/cuda/layers.h"

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

}  // namespace glam::cuda
