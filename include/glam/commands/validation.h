// Validation on the held-out split of every source of the mixture: the same
// rows at every pass, split over the data ranks like a training batch, forward
// only (the parameters are not touched, so training is the same with or
// without it).
#pragma once
#include <string>
#include <vector>

#include "glam/data/batch.h"
#include "glam/model/config.h"
#include "glam/mesh/mesh.h"
#include "glam/data/mixture.h"
#include "glam/model/model.h"

namespace glam {

struct ValResult {
  double loss = 0.0;                          // sum over sources of weight * loss of the source
                                              // (weights renormalised over the sources validated)
  std::vector<std::string> names;             // [sources]
  std::vector<double> by_source;              // [sources] mean cross-entropy per target token
};

class Validator {
 public:
  // Packs this rank's share of train.val_rows rows (rounded up to a multiple of
  // train.batch_rows) of each source's held-out split, in batches of
  // train.batch_rows rows. Sources without a held-out
  // split (a plain .h5 corpus) are left out and listed in skipped().
  Validator(const Mixture& mixture, const Config& cfg, const Mesh& mesh);
  bool empty() const { return names_.empty(); }
  const std::vector<std::string>& skipped() const { return skipped_; }
  // Collective over the mesh: a forward pass over every held-out batch.
  ValResult run(Model& model) const;

 private:
  std::vector<std::string> names_, skipped_;
  std::vector<double> weights_;
  std::vector<std::vector<Batch>> batches_;   // [sources][chunks] this rank's rows
  int64_t micro_rows_ = 0;                    // forwards of train.micro_rows rows (0: a chunk's)
};

// {"step": N, "val_loss": X, "val_loss_by_source": {"name": X, ...}}
std::string val_json(int64_t step, const ValResult& r);

}  // namespace glam
