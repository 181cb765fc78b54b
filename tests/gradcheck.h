// Finite-difference gradient checking shared by the gradient tests.
// Directional check: for a random direction r over a tensor x, compare
//   (f(x + eps r) - f(x - eps r)) / (2 eps)   with   sum_i grad_i r_i.
// A direction sums many coordinates, so the fp32 round-off of f matters far less
// than in a per-coordinate check; a few directions per tensor are tried.
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace gradcheck {

inline std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); i++) s += static_cast<double>(a[i]) * b[i];
  return s;
}

struct Result {
  double worst_rel = 0.0;
};

inline double rms(const std::vector<float>& x) { return std::sqrt(dot(x, x) / std::max<size_t>(1, x.size())); }

// f: the scalar objective evaluated at the current contents of x.
// grad: the analytic gradient of f w.r.t. x (same size as x).
inline Result check(const std::string& name, std::vector<float>& x, const std::vector<float>& grad,
                    const std::function<double()>& f, double eps = 1e-2, double tol = 5e-3,
                    int directions = 3, uint64_t seed = 7) {
  Result r;
  eps *= std::max(rms(x), 1e-2);  // step relative to the tensor's own scale
  for (int d = 0; d < directions; d++) {
    std::vector<float> dir = random_vec(x.size(), seed + d);
    const std::vector<float> x0 = x;
    for (size_t i = 0; i < x.size(); i++) x[i] = x0[i] + static_cast<float>(eps) * dir[i];
    const double fp = f();
    for (size_t i = 0; i < x.size(); i++) x[i] = x0[i] - static_cast<float>(eps) * dir[i];
    const double fm = f();
    x = x0;
    const double numeric = (fp - fm) / (2 * eps);
    const double analytic = dot(grad, dir);
    const double rel = std::abs(numeric - analytic) / std::max({std::abs(numeric), std::abs(analytic), 1e-3});
    r.worst_rel = std::max(r.worst_rel, rel);
    INFO(name << " direction " << d << ": numeric " << numeric << " analytic " << analytic);
    CHECK(rel <= tol);
  }
  std::printf("  gradcheck %-32s worst rel err %.2e (tol %.1e, eps %.0e)\n", name.c_str(), r.worst_rel, tol, eps);
  return r;
}

}  // namespace gradcheck
