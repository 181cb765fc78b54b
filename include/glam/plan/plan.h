// The resource plan of a training run: what one step of `glam train` costs on a
// D x M mesh, computed from the config alone (no MPI, no buffers), so that it works
// for models far larger than this machine. Every figure follows what the code does:
// the parameter table of params.cpp, the Adafactor state of adafactor.cpp, the
// buffers of model.h and the collectives of model.cpp / expert_exchange.cpp.
// Conventions: T = tokens of one data rank per step; A = local heads * d_head;
// H = local hidden (d_ff / M); "per rank" means one cell of the mesh.
#pragma once
#include <cstdint>
#include <string>

#include "glam/model/config.h"

namespace glam {

struct PlanOptions {
  int data = 1, model = 1;       // mesh D x M
  int64_t batch_tokens = 0;      // global tokens per step; 0: train.batch_rows * model.seq_len
  int64_t act_bytes = 4;         // bytes per activation element (the CPU path stores fp32)
  // Routing choices kept after capacity. 1.0 is balanced routing: with capacity
  // factor >= 2 every top-2 choice fits; real routing drops a few percent.
  double kept_fraction = 1.0;
};

// Bytes one rank holds during a step.
struct MemoryPlan {
  int64_t weights = 0;      // fp32 master weights of this rank's shards
  int64_t gradients = 0;    // fp32, one per weight
  int64_t optimizer = 0;    // Adafactor second moments (factored where both dims >= factored_min_dim)
  int64_t activations = 0;  // what forward keeps for backward, plus the logits and their gradient
  int64_t dispatch = 0;     // MoE exchange buffers: dispatched rows, received rows, their outputs
  int64_t total() const { return weights + gradients + optimizer + activations + dispatch; }
};

// Bytes one rank sends per step, counted as the mesh's CommStats counts them:
// all-to-all payload to other ranks; all-reduce elements contributed (float calls).
struct CommPlan {
  int64_t alltoall = 0;           // dispatch + combine, forward + backward, over data
  int64_t allreduce_data = 0;     // gradients of parameters replicated over data
  int64_t allreduce_model = 0;    // tensor-parallel activations and softmax statistics
  int64_t allreduce_replicas = 0; // expert gradients summed over replicas (E < D)
  int64_t reduce_scatter = 0;     // train.shard_state: gradients of the tensors sharded over data
  int64_t allgather = 0;          // ... and this rank's rows of their updated weights (train.shard_weights:
                                  // of each layer's, every time the layer is gathered)
  int64_t allgather_first = 0;    // train.shard_weights: of them, the step's first (embedding, layer 0): exposed
  int64_t alltoall_calls = 0, allreduce_model_calls = 0, allreduce_data_calls = 0;
};

struct Plan {
  std::string config;              // file the config came from
  int data = 1, model = 1;
  int64_t n_params = 0, n_act_params = 0;   // paper's counting (the GLaM paper, Du et al. 2022)
  int64_t tokens_per_step = 0;     // global batch
  int64_t tokens_per_rank = 0;     // T
  int64_t micro_steps = 1;         // train.micro_rows: forwards per step on a rank
  int64_t n_layers = 0;            // model.n_layers (the step model's overlap is per layer)
  int64_t tokens_per_micro = 0;    // T / micro_steps: what activations and dispatch buffers hold
  int64_t rows_per_rank = 0;       // routed choices per rank (2T * kept)
  int64_t local_params = 0;        // elements of this rank's shards
  double forward_flops_per_token = 0.0;  // model FLOPs (matmuls + attention), no duplication
  double train_flops_per_token = 0.0;    // forward + backward = 3 x forward
  double train_flops_per_rank = 0.0;     // what one rank computes per step (router replicated over model)
  double recompute_flops_per_rank = 0.0; // train.remat: the forwards recomputed in the backward (not model FLOPs)
  // The all-to-all's blocks per step (a send, one MoE layer's experts, the return):
  // forwards (remat's recomputed ones too) and backwards, each micro-step's; and the
  // expert GEMM FLOPs of one forward block per rank (a backward block's are twice).
  // train.exchange_chunks = k overlaps each block's all-to-all with its experts.
  int64_t exchange_chunks = 1;
  int64_t a2a_forward_blocks = 0, a2a_backward_blocks = 0;
  double expert_block_flops = 0.0;
  MemoryPlan memory;
  CommPlan comm;
};

// The plan of cfg on opt's mesh. UserError when the mesh does not fit the model
// (heads, hidden dims, vocabulary, experts, batch rows, routing groups).
Plan make_plan(const Config& cfg, const PlanOptions& opt);

// The largest global batch (tokens per step) whose plan fits in `device_memory`
// bytes per rank on opt's mesh, in whole rows and routing groups per data rank;
// 0 when not even the smallest batch fits. Memory grows linearly with the batch.
int64_t largest_fitting_batch(const Config& cfg, PlanOptions opt, int64_t device_memory);

// "DxM" -> D, M (UserError naming `flag` otherwise).
void parse_mesh_shape(const std::string& shape, const std::string& flag, int* data, int* model);
// "80GiB", "512MB", "1.5TiB", "1000000" -> bytes (UserError naming `flag` otherwise).
int64_t parse_bytes(const std::string& text, const std::string& flag);
// 1.23 GiB, 512.0 MiB, ...
std::string format_bytes(double bytes);

}  // namespace glam
