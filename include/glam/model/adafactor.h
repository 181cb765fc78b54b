// Adafactor as GLaM trains with it: no first moment (beta1 = 0), second moment
// factored into row and column statistics for matrices whose two last dims are
// both >= factored_min_dim (per leading index, i.e. per expert for [E, M, H]),
// decay rho_t = 1 - (t+1)^-decay_pow, update clipping U /= max(1, RMS(U)/clip),
// and the parameter-scaled step W -= lr * max(min_param_scale, RMS(W)) * U.
// RMS(U) and RMS(W) are over the whole (global) tensor.
#pragma once
#include <cstdint>
#include <vector>

#include "glam/model/config.h"
#include "glam/mesh/mesh.h"
#include "glam/model/params.h"

namespace glam {

struct AdafactorOptions {
  double decay_pow = 0.8;
  double clip_threshold = 1.0;
  double min_param_scale = 1e-3;
  double eps = 1e-30;              // added to g^2
  int64_t factored_min_dim = 128;
  static AdafactorOptions from(const TrainConfig& t);
};

// Per-parameter second-moment statistics.
struct AdafactorSlot {
  bool factored = false;
  int64_t lead = 1, rows = 1, cols = 1;   // local [lead, rows, cols] view of the tensor
  std::vector<float> v;     // [size] full second moment (not factored)
  std::vector<float> vr;    // [lead, rows] row statistics (factored)
  std::vector<float> vc;    // [lead, cols] column statistics (factored)
  // train.shard_state: v and vr hold only the rows this data rank updates
  // (Param::zero_row0, zero_rows); vc stays whole (every data rank's is the same).
  bool on_shard = false;
};

class Adafactor {
 public:
  Adafactor(const ParamTable& table, const AdafactorOptions& opt);
  // One update of every parameter from its gradient. t: updates made before this one.
  // Tensors sharded over data (Param::zero_sharded) update their rows from the
  // reduce-scattered gradient, then all-gather the weights (collective over data).
  void step(ParamTable& table, double lr, int64_t t, const Mesh& mesh);
  // The statistics in the layout of an unsharded run (collective over data): what a
  // checkpoint stores and loads; the next step keeps only this rank's rows again.
  // The statistics are built in this layout, so a checkpoint loads before the first step.
  void gather_state(const ParamTable& table, const Mesh& mesh);
  const std::vector<AdafactorSlot>& slots() const { return slots_; }
  const AdafactorOptions& options() const { return opt_; }
  std::vector<AdafactorSlot>& slots() { return slots_; }

 private:
  void update(Param& p, AdafactorSlot& s, double rho, double lr, const Mesh& mesh);
  void keep_shard_rows(const Param& p, AdafactorSlot& s);
  void square_sums(const float* g, int64_t R, int64_t C, std::vector<double>& row, std::vector<double>& col) const;
  void factored_update(const Param& p, const float* g, float* u, float* vr, float* vc, int64_t R, int64_t C,
                       double rho, const Mesh& mesh) const;
  AdafactorOptions opt_;
  std::vector<AdafactorSlot> slots_;  // one per parameter, in table order
  std::vector<float> u_;              // [largest parameter] scratch for the update
};

// True when p's second moment is kept as row and column statistics.
bool adafactor_factored(const Param& p, const AdafactorOptions& opt);
// Floats of second-moment state this rank keeps for its shard of p.
int64_t adafactor_state_size(const Param& p, const AdafactorOptions& opt);

// Learning rate at 1-based step t: lr for t <= warmup, then lr * sqrt(warmup / t).
double learning_rate(const TrainConfig& t, int64_t step);

// sqrt(sum of g^2) over the whole mesh, every shard counted once.
double global_grad_norm(const ParamTable& table, const Mesh& mesh);

}  // namespace glam
