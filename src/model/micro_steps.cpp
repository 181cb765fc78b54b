// Gradient accumulation over micro-steps (micro_steps.h).
#include "glam/model/micro_steps.h"

#include <algorithm>

#include "glam/base/check.h"

namespace glam {

namespace {

// The step's loss terms from its micro-steps' (each averaged over its own targets).
struct StepLoss {
  double ce_sum = 0.0, z_sum = 0.0;  // sums over the step's targets
  LossParts parts;

  void add(const LossParts& m) {
    ce_sum += m.ce * static_cast<double>(m.n_targets);
    z_sum += m.z * static_cast<double>(m.n_targets);
    parts.aux += m.aux;  // each micro-step's share of the step's groups
    parts.choices += m.choices;
    parts.dropped += m.dropped;
    if (parts.layer_dropped.empty()) {
      parts.layer_dropped = m.layer_dropped;
      parts.load_before = m.load_before;
      parts.load_after = m.load_after;
      return;
    }
    for (size_t l = 0; l < m.layer_dropped.size(); l++) {
      parts.layer_dropped[l] += m.layer_dropped[l];
      for (size_t e = 0; e < m.load_before[l].size(); e++) {
        parts.load_before[l][e] += m.load_before[l][e];
        parts.load_after[l][e] += m.load_after[l][e];
      }
    }
  }

  LossParts finish(int64_t n_targets, const ModelConfig& cfg) {
    const double n = static_cast<double>(std::max<int64_t>(1, n_targets));
    parts.n_targets = n_targets;
    parts.ce = ce_sum / n;
    parts.z = z_sum / n;
    parts.loss = parts.ce + cfg.aux_loss_weight * parts.aux + cfg.z_loss_weight * parts.z;
    return parts;
  }
};

// Targets of the step over the whole mesh (each data rank counts its rows once).
int64_t step_targets(const Batch& batch, const Mesh& mesh) {
  double n = static_cast<double>(std::count_if(batch.targets.begin(), batch.targets.end(),
                                               [](int32_t t) { return t >= 0; }));
  mesh.allreduce_sum_data(&n, 1);
  return static_cast<int64_t>(n);
}

// Clears the model's micro-step on every way out.
struct MicroScope {
  Model& model;
  ~MicroScope() { model.set_micro_step(MicroStep{}); }
};

}  // namespace

void slice_rows(Batch& out, const Batch& batch, int64_t first, int64_t n) {
  GLAM_ASSERT(first >= 0 && n >= 0 && first + n <= batch.rows);
  const int64_t S = batch.seq_len, from = first * S, to = (first + n) * S;
  out.rows = n;
  out.seq_len = S;
  out.ids.assign(batch.ids.begin() + from, batch.ids.begin() + to);
  out.targets.assign(batch.targets.begin() + from, batch.targets.begin() + to);
  out.segments.assign(batch.segments.begin() + from, batch.segments.begin() + to);
}

LossParts forward_backward(Model& model, const Batch& batch, int64_t micro_rows, const Mesh& mesh) {
  model.zero_grad();
  if (micro_rows == 0 || micro_rows == batch.rows) {
    const LossParts parts = model.forward(batch);
    model.backward();
    return parts;
  }
  GLAM_REQUIRE(batch.rows % micro_rows == 0, "train.micro_rows ", micro_rows, " must divide the rows each data rank has in a step (",
               batch.rows, " = train.batch_rows / ", mesh.data_size, " data ranks)");
  const int64_t n_targets = step_targets(batch, mesh);
  MicroScope scope{model};
  StepLoss step;
  Batch micro;
  for (int64_t first = 0; first < batch.rows; first += micro_rows) {
    model.set_micro_step(MicroStep{first, batch.rows, n_targets});
    slice_rows(micro, batch, first, micro_rows);
    step.add(model.forward(micro));
    model.backward();
  }
  return step.finish(n_targets, model.config());
}

}  // namespace glam
