// Whether a run fits this machine's memory, checked before the model allocates:
// the per-rank bytes of glam plan (plan.h) for this mesh, times the ranks that
// share this node, against its physical memory. A config that does not fit stops
// with a UserError naming the part that is too large and the keys that size it,
// where it would otherwise end in std::bad_alloc halfway through.
#pragma once
#include "glam/model/config.h"
#include "glam/mesh/mesh.h"

namespace glam {

enum class MemoryUse {
  training,   // weights, gradients, Adafactor state, a batch's activations and dispatch buffers
  inference,  // weights and gradients (the parameter table holds both); the batch is a few rows
};

// Collective over mesh.world (counts the ranks on each node). `what` names the
// command for the message ("glam train").
void require_fits_host_memory(const Config& cfg, const Mesh& mesh, MemoryUse use, const char* what);

}  // namespace glam
