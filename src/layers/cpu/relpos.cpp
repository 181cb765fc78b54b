// T5-style relative position buckets (as GLaM's public code): for a query at i and
// a key at j <= i, n = i - j; exact buckets for n < 16, then 16 logarithmic buckets
// up to distance 128; everything farther shares bucket 31.
#include <algorithm>
#include <cmath>

#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

int relpos_bucket(int64_t i_minus_j) {
  constexpr int kExact = kRelposBuckets / 2;  // 16
  constexpr double kMaxDistance = 128.0;
  int64_t n = std::max<int64_t>(0, i_minus_j);
  if (n < kExact) return static_cast<int>(n);
  int b = kExact + static_cast<int>(std::log(static_cast<double>(n) / kExact) /
                                    std::log(kMaxDistance / kExact) * kExact);
  return std::min(kRelposBuckets - 1, b);
}

}  // namespace glam::cpu
