// Held-out loss per source (include/glam/commands/validation.h). Chunk c of source s
// holds held-out rows [c*B, (c+1)*B) of its packed stream (val_rows rounded up
// to whole chunks, so that every forward has the training shape); data rank d takes
// rows [d*B/D, (d+1)*B/D) of each chunk, in forwards of train.micro_rows rows as
// training takes them. The loss of a source is the mean cross-entropy over every
// target of its chunks.
#include "glam/commands/validation.h"

#include "glam/base/check.h"
#include "glam/io/json_line.h"
#include "glam/model/micro_steps.h"

namespace glam {

Validator::Validator(const Mixture& mixture, const Config& cfg, const Mesh& mesh)
    : micro_rows_(cfg.train.micro_rows) {
  const int64_t B = cfg.train.batch_rows, rows = B / mesh.data_size, S = cfg.model.seq_len;
  for (size_t s = 0; s < mixture.size(); ++s) {
    const MixtureSource& src = mixture.source(s);
    if (!src.val) {
      skipped_.push_back(src.name + " (" + src.path + ")");
      continue;
    }
    names_.push_back(src.name);
    weights_.push_back(src.weight);
    batches_.emplace_back();
    for (int64_t c = 0; c < (cfg.train.val_rows + B - 1) / B; ++c)
      batches_.back().push_back(src.val->rows(c * B + mesh.data_rank * rows, rows, S));
  }
  double total = 0;
  for (double w : weights_) total += w;
  for (double& w : weights_) w /= total;
}

ValResult Validator::run(Model& model) const {
  ValResult r;
  r.names = names_;
  for (size_t s = 0; s < batches_.size(); ++s) {
    double ce_sum = 0.0;
    int64_t targets = 0;
    Batch micro;
    for (const Batch& b : batches_[s]) {
      const int64_t step = micro_rows_ > 0 ? micro_rows_ : b.rows;
      for (int64_t first = 0; first < b.rows; first += step) {
        model.set_micro_step(MicroStep{first, b.rows, 0});  // the chunk's groups and token positions
        slice_rows(micro, b, first, step);
        const LossParts parts = model.forward(micro);
        ce_sum += parts.ce * static_cast<double>(parts.n_targets);
        targets += parts.n_targets;
      }
      model.set_micro_step(MicroStep{});
    }
    r.by_source.push_back(targets > 0 ? ce_sum / static_cast<double>(targets) : 0.0);
    r.loss += weights_[s] * r.by_source.back();
  }
  return r;
}

std::string val_json(int64_t step, const ValResult& r) {
  nlohmann::ordered_json by_source = nlohmann::ordered_json::object();
  for (size_t s = 0; s < r.names.size(); ++s) by_source[r.names[s]] = r.by_source[s];
  const nlohmann::ordered_json record = {{"step", step}, {"val_loss", r.loss}, {"val_loss_by_source", by_source}};
  return json_line(record, kMetricsPrecision);
}

}  // namespace glam
