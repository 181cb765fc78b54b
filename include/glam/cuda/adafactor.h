// Adafactor on the GPU for parameters held in device memory: the update of
// glam::Adafactor (adafactor.h), step for step, and the sum of squares behind
// the global gradient norm. tests/cuda checks both against the CPU.
#pragma once
#include <vector>

#include "glam/adafactor.h"
#include "glam/cuda/layers.h"
#include "glam/mesh.h"
#include "glam/params.h"

namespace glam::cuda {

// A parameter's second-moment statistics: the full one on the device; the
// factored row and column statistics (small) on the host.
struct DeviceAdafactorSlot {
  bool factored = false;
  int64_t lead = 1, rows = 1, cols = 1;
  Buffer<float> v;              // [size] (not factored)
  std::vector<float> vr, vc;    // [lead, rows], [lead, cols] (factored)
};
DeviceAdafactorSlot make_slot(const AdafactorSlot& host);

// One update of w [p.size()] from g, as Adafactor::update (rho from the step).
void adafactor_update(const Context& ctx, float* w, const float* g, DeviceAdafactorSlot& s, const Param& p,
                      double rho, double lr, const AdafactorOptions& opt, const Mesh& mesh);

// sum of x^2 in double, deterministic (fixed grid, partial sums added in order).
double sum_squares(const Context& ctx, const float* x, int64_t n);

}  // namespace glam::cuda
