// Helpers the MPI equivalence tests share: this data rank's rows of a random batch
// and a closeness check scaled by the reference's largest value.
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "glam/data/batch.h"
#include "glam/mesh/mesh.h"
#include "glam/model/config.h"

namespace glam::test {

// This data rank's rows of a batch of c.train.batch_rows random rows (rng seeded
// with `seed`): every `hole`-th target masked, a second segment from position
// seg0 + r % seg_span of row r.
inline Batch random_rank_rows(const Config& c, const Mesh& mesh, uint64_t seed, int64_t hole, int64_t seg0,
                              int64_t seg_span) {
  const int64_t rows = c.train.batch_rows / mesh.data_size, S = c.model.seq_len;
  std::mt19937_64 rng(seed);
  Batch b;
  b.rows = rows;
  b.seq_len = S;
  for (int64_t r = 0; r < c.train.batch_rows; r++)
    for (int64_t s = 0; s < S; s++) {
      const int32_t id = static_cast<int32_t>(rng() % c.model.vocab_size);
      const int32_t target = (r * S + s) % hole == hole - 1 ? -1 : static_cast<int32_t>(rng() % c.model.vocab_size);
      if (r / rows != mesh.data_rank) continue;
      b.ids.push_back(id);
      b.targets.push_back(target);
      b.segments.push_back(static_cast<int32_t>(s >= seg0 + r % seg_span));
    }
  return b;
}

// max |a - b| <= rel * max |b| + 1e-8 (and the same sizes), printing the largest difference
inline bool close(const std::vector<float>& a, const std::vector<float>& b, double rel) {
  if (a.size() != b.size()) return false;
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < b.size(); i++) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  if (err > rel * scale + 1e-8) UNSCOPED_INFO("largest difference " << err << " of " << scale << ", tolerance " << rel);
  return err <= rel * scale + 1e-8;
}

}  // namespace glam::test
