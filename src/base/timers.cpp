// Phase timers and their end-of-run report.
#include "glam/base/timers.h"

#include <cstdio>

namespace glam {

void PhaseTimers::add(const std::string& phase, double seconds) {
  for (auto& p : phases_)
    if (p.first == phase) { p.second += seconds; return; }
  phases_.emplace_back(phase, seconds);
}

std::string PhaseTimers::report(double total) const {
  std::string out;
  char line[128];
  for (const auto& [name, sec] : phases_) {
    std::snprintf(line, sizeof line, "  %-12s %9.2f s %6.1f%%\n", name.c_str(), sec, total > 0 ? 100.0 * sec / total : 0.0);
    out += line;
  }
  return out;
}

}  // namespace glam
