// The memory check before a model is built (host_memory.h).
#include "glam/mesh/host_memory.h"

#include <algorithm>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/model/params.h"
#include "glam/plan/plan.h"

namespace glam {

namespace {

// The keys that size the largest part of the per-rank memory.
const char* keys_of_largest(const MemoryPlan& m, MemoryUse use) {
  const int64_t params = m.weights + m.gradients + (use == MemoryUse::training ? m.optimizer : 0);
  const int64_t batch = m.activations + (use == MemoryUse::training ? m.dispatch : 0);
  return params >= batch ? "model.d_model, model.vocab_size, model.d_ff, model.n_experts, model.n_layers (the parameters)"
                         : "train.batch_rows, model.seq_len, model.vocab_size, model.d_ff (a batch's activations)";
}

// Bytes one rank needs: for training the plan's total (plan.h); for inference
// the parameter table (weights and gradients; the batch is a few rows).
int64_t bytes_needed(const Config& cfg, const Mesh& mesh, MemoryUse use, MemoryPlan* parts) {
  if (use == MemoryUse::inference) {
    const int64_t elements = describe_params(cfg.model, mesh).local_size();
    parts->weights = parts->gradients = elements * 4;
    return parts->weights + parts->gradients;
  }
  PlanOptions opt;
  opt.data = mesh.data_size;
  opt.model = mesh.model_size;
  *parts = make_plan(cfg, opt).memory;
  return parts->total();
}

}  // namespace

void require_fits_host_memory(const Config& cfg, const Mesh& mesh, MemoryUse use, const char* what) {
  const int local = mesh.node_ranks().size;
  const int64_t have = host_memory_bytes();
  if (have <= 0) return;  // unknown: nothing to compare with
  MemoryPlan m;
  const int64_t need = bytes_needed(cfg, mesh, use, &m);
  const int64_t share = have / local;
  GLAM_REQUIRE(need <= share, what, ": one rank of mesh ", mesh.data_size, "x", mesh.model_size, " needs ",
               format_bytes(double(need)), " (weights ", format_bytes(double(m.weights)), ", activations ",
               format_bytes(double(m.activations)), "; glam plan --config C --mesh ", mesh.data_size, "x",
               mesh.model_size, " has the details) but this machine's ", format_bytes(double(have)), " leave ",
               format_bytes(double(share)), " to each of its ", local, " ranks; lower ", keys_of_largest(m, use),
               " or spread the model over more machines");
}

}  // namespace glam
