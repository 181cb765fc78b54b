// Named phase timers (LAMMPS style): where the time of a run goes.
#pragma once
#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace glam {

class PhaseTimers {
 public:
  // Adds seconds to a named phase (created on first use, listed in that order).
  void add(const std::string& phase, double seconds);
  const std::vector<std::pair<std::string, double>>& phases() const { return phases_; }
  // A table: phase, seconds, share of `total`.
  std::string report(double total) const;

 private:
  std::vector<std::pair<std::string, double>> phases_;
};

// Times the enclosing scope into one phase.
class ScopedPhase {
 public:
  ScopedPhase(PhaseTimers& t, const char* phase) : t_(t), phase_(phase), t0_(std::chrono::steady_clock::now()) {}
  ~ScopedPhase() { t_.add(phase_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count()); }
 private:
  PhaseTimers& t_;
  const char* phase_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace glam
