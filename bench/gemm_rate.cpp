// The machine's GEMM rate through the same cpu::gemm glam trains with: fp32
// (OpenBLAS sgemm) or bf16 (oneDNN, operands rounded to bf16 on every call as in
// training, fp32 sums). The denominator of model-FLOPs utilisation (MFU) in
// bench/train_bench.py. Times C[n,n] = A[n,n] B[n,n] (2 n^3 flops per call) with
// the thread count the environment sets (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS),
// after one warm-up call, and prints the best of --reps calls for each size as
// one JSON object per line:
//   {"n": 1024, "threads": 2, "precision": "fp32", "gflops": 151.2, "seconds": 0.0142}
// usage: gemm_rate [--sizes 256,512,1024,2048] [--reps 5] [--precision fp32|bf16]
#include <cblas.h>
#include <omp.h>

#include "glam/base/check.h"
#include "glam/layers/cpu/gemm.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<long> parse_sizes(const std::string& s) {
  std::vector<long> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    long n = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || n <= 0 || n > 16384) {
      std::fprintf(stderr, "gemm_rate: error: --sizes expects positive integers up to 16384, got '%s'\n", item.c_str());
      std::exit(2);
    }
    out.push_back(n);
  }
  return out;
}

double best_seconds(long n, int reps, glam::cpu::Precision p) {
  std::vector<float> a(n * n), b(n * n), c(n * n);
  for (long i = 0; i < n * n; i++) { a[i] = 0.001f * (i % 997); b[i] = 0.002f * (i % 991); }
  auto gemm = [&] {
    glam::cpu::gemm(p, false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  gemm();  // warm-up: threads started, pages touched
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    auto t0 = std::chrono::steady_clock::now();
    gemm();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string sizes = "256,512,1024,2048";
  int reps = 5;
  std::string precision = "fp32";
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--sizes" && i + 1 < argc) sizes = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--precision" && i + 1 < argc) precision = argv[++i];
    else {
      std::fprintf(stderr, "usage: gemm_rate [--sizes 256,512,1024,2048] [--reps 5] [--precision fp32|bf16]\n");
      return 2;
    }
  }
  glam::cpu::Precision p;
  try {
    p = glam::cpu::parse_precision(precision, "--precision");
  } catch (const glam::UserError& e) {
    std::fprintf(stderr, "gemm_rate: error: %s\n", e.what());
    return 2;
  }
  if (reps < 1) {
    std::fprintf(stderr, "gemm_rate: error: --reps must be at least 1\n");
    return 2;
  }
  for (long n : parse_sizes(sizes)) {
    const double s = best_seconds(n, reps, p);
    const int threads = p == glam::cpu::Precision::fp32 ? openblas_get_num_threads() : omp_get_max_threads();
    std::printf("{\"n\": %ld, \"threads\": %d, \"precision\": \"%s\", \"gflops\": %.2f, \"seconds\": %.6f}\n",
                n, threads, precision.c_str(), 2.0 * n * n * n / s / 1e9, s);
  }
  return 0;
}
