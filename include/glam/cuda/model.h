// The GLaM decoder on the GPU: the same parameters, the same layer order and the
// same mesh reductions as glam::Model (model.h), with the layers of
// glam::cuda (layers.h). The CPU model is its oracle (tests/cuda).
//
// Weights: fp32 master copies live in params() on the host (the optimizer and
// the checkpoints use them, as on the CPU); forward uploads them once per call
// into device fp32 copies and bf16 copies for the GEMMs. Activations that feed
// GEMMs are bf16, the residual stream and all statistics fp32. backward leaves
// the gradient of the global batch's loss in params()[i].g on the host.
// Collectives take device pointers when the MPI library is CUDA-aware (asked at
// run time), otherwise they are staged through host memory.
#pragma once
#include <memory>

#include "glam/config.h"
#include "glam/corpus.h"
#include "glam/mesh.h"
#include "glam/model.h"
#include "glam/params.h"

namespace glam::cuda {

class Model {
 public:
  Model(const Config& cfg, const Mesh& mesh);
  ~Model();
  ParamTable& params() { return params_; }
  const ParamTable& params() const { return params_; }
  LossParts forward(const Batch& batch, bool no_drop = false);
  void backward();
  std::vector<float> logits() const;  // [T, Vl] of the last forward, fp32, on the host
  void set_step(int64_t step) { step_ = step; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ParamTable params_;
  int64_t step_ = 0;
};

// True when the MPI library says at run time that it takes device pointers.
bool mpi_is_cuda_aware();

}  // namespace glam::cuda
