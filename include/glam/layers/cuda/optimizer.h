// Adafactor and the gradient norm with every statistic on the GPU (optimizer.cu):
// glam::Adafactor's update (adafactor.h) for parameters in device memory, step
// for step, in double where the CPU sums in double. A step makes no host wait on
// a 1x1 mesh; on a larger one the per-tensor RMS sums cross the mesh once (one
// copy to the host, the collectives, one copy back), and row/column statistics of
// tensors split over the model axis are reduced through `reduce_model`.
#pragma once
#include <functional>
#include <vector>

#include "glam/model/adafactor.h"
#include "glam/layers/cuda/layers.h"
#include "glam/mesh/mesh.h"
#include "glam/model/params.h"
#include "glam/model/tensor.h"

namespace glam::cuda {

class DeviceAdafactor {
 public:
  // In-place sum over the model axis of n doubles in device memory.
  using ReduceModel = std::function<void(double* device, int64_t n)>;

  // Statistics (zero) for every parameter of table, in one allocation of alloc.
  DeviceAdafactor(const ParamTable& table, const AdafactorOptions& opt, Allocator& alloc);
  void load(const Adafactor& host);  // the host optimizer's statistics to the device
  void store(Adafactor& host);       // and back (waits for the device)

  // w[i] -= step_i * U_i for every parameter (w, g: device views in table order).
  void step(const Context& ctx, const ParamTable& table, const std::vector<Tensor>& w, const std::vector<Tensor>& g,
            double lr, int64_t t, const Mesh& mesh, const ReduceModel& reduce_model);

 private:
  struct Slot {
    bool factored = false;
    int64_t lead = 1, rows = 1, cols = 1;
    double R_global = 1.0;
    Tensor v, vr, vc;  // [size] (full) or [lead, rows], [lead, cols] (factored)
    Tensor vr_sum;     // f64 [lead] (factored): sum of vr over the (global) rows
  };
  void statistics(const Context& ctx, const Param& p, Slot& s, const float* g, double rho,
                  const ReduceModel& reduce_model);
  // apply == false: sums_[i] = (sum U^2, sum W^2); true: w -= step * U.
  void update(const Context& ctx, const Slot& s, const float* g, float* w, int64_t n, size_t i, bool apply,
              const float* step);

  AdafactorOptions opt_;
  std::vector<Slot> slots_;
  Arena state_, scratch_;
  Tensor rows_, cols_;            // f64 [largest lead*R], [largest lead*C]
  Tensor partial_;                // [kBlocks] doubles
  Tensor sums_;                   // [n_params, 2] doubles: sum u^2, sum w^2
  Tensor steps_;                  // [n_params] f32
  Tensor count_;                  // f64 [n_params] elements of each whole tensor
  std::vector<double> host_sums_;
  std::vector<float> host_steps_;
};

// The global gradient norm sqrt(sum g^2), every shard counted once: one wait for
// its value. partial: f64 [norm_partials()], sums: f64 [n_params] device scratch.
int64_t norm_partials();
double gradient_norm(const Context& ctx, const ParamTable& table, const std::vector<Tensor>& g, const Mesh& mesh,
                     const Tensor& partial, const Tensor& sums, std::vector<double>& host);

}  // namespace glam::cuda
