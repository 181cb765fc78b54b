// The GLaM decoder on the GPU: glam::Model (model.h) runs its forward and
// backward here when built with `Device::cuda`. The same parameters, layer order
// and mesh reductions as the CPU path, with the layers of glam::cuda (layers.h);
// the CPU path is its oracle (tests/cuda).
//
// Weights: the fp32 master weights, their gradients and the Adafactor statistics
// live on the device from the first forward on (uploaded from the ParamTable);
// each forward makes bf16 copies of the weights for the GEMMs. Activations that
// feed GEMMs are bf16, the residual stream and all statistics fp32. backward
// leaves the gradient of the global batch's loss (reduced over the mesh as the
// CPU model does) on the device; to_host copies weights, gradients and the
// optimizer's statistics back into the ParamTable and the Adafactor (before
// saving), to_device the other way (after loading).
// Collectives take device pointers when the MPI library is CUDA-aware (asked at
// run time), otherwise they are staged through host memory.
#pragma once
#include <memory>

#include <vector>

#include "glam/adafactor.h"
#include "glam/config.h"
#include "glam/corpus.h"
#include "glam/mesh.h"
#include "glam/params.h"

namespace glam {
struct LossParts;
}

namespace glam::cuda {

class Engine {
 public:
  Engine(const Config& cfg, const Mesh& mesh, ParamTable& params);
  ~Engine();
  LossParts forward(const Batch& batch, bool no_drop, int64_t step);
  void backward();  // overwrites the device gradients
  double grad_norm();
  void optimizer_step(Adafactor& opt, double lr, int64_t t);
  void to_host(Adafactor* opt);
  void to_device(const Adafactor* opt);
  std::vector<float> logits() const;  // [T, Vl] of the last forward, fp32, on the host
  std::vector<float> lse() const;     // [T]

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True when the MPI library says at run time that it takes device pointers.
bool mpi_is_cuda_aware();

}  // namespace glam::cuda
