// The machine's fp32 GEMM rate through the same OpenBLAS glam links: the
// denominator of model-FLOPs utilisation (MFU) in bench/train_bench.py.
// Times C[n,n] = A[n,n] B[n,n] (2 n^3 flops per call) with the thread count the
// environment sets (OPENBLAS_NUM_THREADS), after one warm-up call, and prints
// the best of --reps calls for each size as one JSON object per line:
//   {"n": 1024, "threads": 2, "gflops": 151.2, "seconds": 0.0142}
// usage: gemm_rate [--sizes 256,512,1024,2048] [--reps 5]
#include <cblas.h>

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

double best_seconds(long n, int reps) {
  std::vector<float> a(n * n), b(n * n), c(n * n);
  for (long i = 0; i < n * n; i++) { a[i] = 0.001f * (i % 997); b[i] = 0.002f * (i % 991); }
  auto gemm = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                c.data(), n);
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
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--sizes" && i + 1 < argc) sizes = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: gemm_rate [--sizes 256,512,1024,2048] [--reps 5]\n");
      return 2;
    }
  }
  if (reps < 1) {
    std::fprintf(stderr, "gemm_rate: error: --reps must be at least 1\n");
    return 2;
  }
  for (long n : parse_sizes(sizes)) {
    const double s = best_seconds(n, reps);
    std::printf("{\"n\": %ld, \"threads\": %d, \"gflops\": %.2f, \"seconds\": %.6f}\n", n,
                openblas_get_num_threads(), 2.0 * n * n * n / s / 1e9, s);
  }
  return 0;
}
