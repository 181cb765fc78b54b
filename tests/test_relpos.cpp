// T5-style relative position buckets (the GLaM paper, Du et al. 2022) against the formula
// written out here independently of src/layers/cpu/relpos.cpp:
//   n = max(0, i - j); bucket = n if n < 16, else min(31, 16 + int(log(n/16) / log(128/16) * 16)).
// Checked three ways: the formula over n = -50 .. 2000, a table of values worked
// out by hand, and the first distance of every log bucket from its closed form
// ceil(16 * 8^((b-16)/16)) (no log truncation involved).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "glam/layers/cpu/layers.h"

using glam::cpu::relpos_bucket;

namespace {

int reference_bucket(int64_t i_minus_j) {
  const int64_t n = i_minus_j > 0 ? i_minus_j : 0;
  if (n < 16) return static_cast<int>(n);
  const double b = 16.0 + std::floor(std::log(static_cast<double>(n) / 16.0) / std::log(128.0 / 16.0) * 16.0);
  return b > 31.0 ? 31 : static_cast<int>(b);
}

}  // namespace

TEST_CASE("relpos_bucket matches the T5 formula for distances -50 .. 2000") {
  int mismatches = 0;
  for (int64_t n = -50; n <= 2000; n++) {
    const int got = relpos_bucket(n), want = reference_bucket(n);
    if (got != want) {
      mismatches++;
      INFO("distance " << n << ": got bucket " << got << ", expected " << want);
      CHECK(got == want);
    }
  }
  std::printf("  relpos: %d mismatches over distances -50..2000 (exact match required)\n", mismatches);
  CHECK(mismatches == 0);
}

TEST_CASE("relpos_bucket known values") {
  // Worked out by hand: 16 + int(log(n/16)/log(8)*16).
  const std::vector<std::pair<int64_t, int>> known = {
      {0, 0},    {1, 1},    {7, 7},    {15, 15},  {16, 16},  {17, 16},  {18, 16},
      {19, 17},  {20, 17},  {24, 19},  {32, 21},  {45, 23},  {46, 24},  {64, 26},
      {100, 30}, {112, 30}, {113, 31}, {127, 31}, {128, 31}, {129, 31}, {1000, 31},
      {1 << 20, 31}};
  for (const auto& [n, bucket] : known) {
    INFO("distance " << n);
    CHECK(relpos_bucket(n) == bucket);
  }
}

TEST_CASE("relpos_bucket: first distance of each log bucket, monotone, range, negatives") {
  // Bucket b >= 17 starts at the smallest n with log(n/16)/log(8)*16 >= b - 16.
  for (int b = 17; b <= 31; b++) {
    const int64_t first = static_cast<int64_t>(std::ceil(16.0 * std::pow(8.0, (b - 16) / 16.0)));
    INFO("bucket " << b << " should start at distance " << first);
    CHECK(relpos_bucket(first) == b);
    CHECK(relpos_bucket(first - 1) == b - 1);
  }
  int prev = relpos_bucket(0);
  for (int64_t n = 1; n <= 5000; n++) {
    const int b = relpos_bucket(n);
    INFO("distance " << n);
    REQUIRE(b >= prev);
    REQUIRE(b <= glam::cpu::kRelposBuckets - 1);
    prev = b;
  }
  CHECK(prev == 31);
  // Keys after the query (masked out by causality anyway) share bucket 0.
  for (int64_t n : {-1, -2, -15, -16, -128, -100000}) {
    INFO("distance " << n);
    CHECK(relpos_bucket(n) == 0);
  }
}
