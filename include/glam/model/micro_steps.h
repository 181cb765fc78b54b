// One training step's forward and backward in micro-steps (train.micro_rows):
// a data rank's rows go through the model micro_rows at a time, the gradients
// accumulating, so that a step's batch need not fit in memory at once.
#pragma once
#include <cstdint>

#include "glam/data/batch.h"
#include "glam/mesh/mesh.h"
#include "glam/model/model.h"

namespace glam {

// Zeroes the gradients, then forward and backward over this rank's rows of the
// step (batch) in micro-steps of micro_rows rows (0: one micro-step); afterwards
// the gradients are the step's, summed over the data axis, and the returned loss
// terms are the step's, as one forward over the whole batch would give them.
//
// What equals the one-shot step: routing (groups are fixed in tokens, so every
// group, its capacity and its drops are the same; the random second-expert policy
// draws by global token position), the loss means (divided by the step's targets
// and groups, counted first) and the routing statistics, exactly up to the order
// of fp32 sums. That order: each micro-step's weight gradients are summed over its
// own tokens (one GEMM) and added to the gradient of the micro-steps before it,
// in row order; the one-shot step sums over all its tokens in one GEMM. The data
// axis is summed once, after the last micro-step.
LossParts forward_backward(Model& model, const Batch& batch, int64_t micro_rows, const Mesh& mesh);

// Rows [first, first + n) of batch, into out (out's vectors are reused).
void slice_rows(Batch& out, const Batch& batch, int64_t first, int64_t n);

}  // namespace glam
