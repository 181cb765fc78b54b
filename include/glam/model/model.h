// A GLaM decoder on this rank's shard of the mesh: forward is a flat list of layer
// calls over the residual stream, backward its mirror in reverse order. Every
// activation the backward needs is a named buffer with its shape.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "glam/model/backend.h"
#include "glam/data/batch.h"
#include "glam/model/config.h"
#include "glam/mesh/device.h"
#include "glam/mesh/exchange.h"
#include "glam/mesh/mesh.h"
#include "glam/model/moe.h"
#include "glam/model/params.h"
#include "glam/model/tensor.h"
#include "glam/base/timers.h"

namespace glam { class Adafactor; }

namespace glam {

// Loss terms of one forward pass, already averaged over the global batch.
struct LossParts {
  double loss = 0.0, ce = 0.0, aux = 0.0, z = 0.0;  // loss = ce + w_aux*aux + w_z*z
  int64_t n_targets = 0;                            // targets in the global batch
  int64_t choices = 0, dropped = 0;                 // routing choices, dropped for capacity (global)
  std::vector<std::vector<int64_t>> load_before, load_after;  // [moe layer][E] global batch
  std::vector<int64_t> layer_dropped;                         // [moe layer] choices dropped
};

// Every activation the backward needs, as views into the model's activation arena
// (one allocation per device, sized for the batch shape). dtype "gemm" is the
// backend's GEMM operand type (f32 on the CPU, bf16 on the GPU). The MoE buffers
// are sized for the most rows routing can produce; rows() views use what a step used.
struct LayerActs {
  Tensor x;              // [T, M] f32 residual stream entering the layer
  Tensor xn1;            // [T, M] gemm  RMSNorm before attention
  Tensor rstd1;          // [T] f32
  Tensor q, k, v;        // [T, A] f32 this rank's heads
  Tensor att_state;      // the backend's attention state (cpu: row max and 1/sum [B, nh, S, 2]; cuda: lse [B, nh, S])
  Tensor att;            // [T, A] f32 attention output before Wo
  Tensor x_mid;          // [T, M] f32 residual after attention
  Tensor xn2;            // [T, M] gemm  RMSNorm before the FFN
  Tensor xn2_f32;        // [T, M] f32 the router's input (xn2 itself when gemm is f32)
  Tensor rstd2;          // [T] f32
  // dense GEGLU layers
  Tensor a0, a1;         // [T, H] f32 gelu(a0) * a1 = h
  Tensor h;              // [T, H] gemm
  // MoE layers
  Tensor router_logits;  // [T, E] f32
  Routing route;
  Tensor ein;            // [rows_max, M] f32 dispatched tokens, router order (all E experts)
  ExchangePlan xplan;    // who sends how many rows to whom over the data axis
  Tensor xin;            // [recv_max, M] f32 rows for this rank's experts, local expert-major
  Tensor pre;            // [recv_max, H] f32 expert pre-activation
  Tensor eh;             // [recv_max, H] gemm expert activation
  Tensor xout;           // [recv_max, M] f32 this rank's expert outputs
  Tensor eout;           // [rows_max, M] f32 expert outputs back in router order
};

// Backward scratch, one set for all layers.
struct GradActs {
  Tensor dx;             // [T, M] f32 gradient of the residual stream
  Tensor dxn;            // [T, M] f32 gradient of a normed input
  Tensor dffn;           // [T, M] f32 (forward: the FFN output)
  Tensor dlogits;        // [T, Vl] f32
  Tensor datt, dq, dk, dv;   // [T, A] f32
  Tensor dh, da0, da1;       // [T, H] f32
  Tensor drouter;            // [T, E] f32
  Tensor dweight;            // [T, 2] f32 combine weights
  Tensor deout, dein;        // [rows_max, M] f32
  Tensor dxout, dxin;        // [recv_max, M] f32
  Tensor dscratch;           // [recv_max, H] f32
};

// A step whose rows are split into micro-steps (train.micro_rows): this forward
// holds rows [first_row, first_row + batch.rows) of the step_rows this rank has in
// the step, whose targets over the whole mesh number n_targets. Routing groups
// stay the same groups of tokens and the losses divide by the step's targets and
// groups, so the accumulated gradients are those of the one-shot step. The
// default (step_rows 0): this forward is the whole step.
struct MicroStep {
  int64_t first_row = 0, step_rows = 0, n_targets = 0;
  bool last(int64_t rows) const { return step_rows == 0 || first_row + rows == step_rows; }
};

// The router's options for MoE layer `layer` at training step `step`, T tokens on
// this rank (no_drop: inference), of a step with step_T tokens on this rank of
// which these start at first_t (micro-steps; 0: T and 0). Every backend routes
// with these.
cpu::RouterOptions router_options(const ModelConfig& cfg, const Mesh& mesh, uint64_t seed, int64_t step,
                                  int64_t layer, int64_t T, bool no_drop, int64_t step_T = 0, int64_t first_t = 0);
// Adds one MoE layer's share of the global batch's aux loss, loads and drops to
// parts (collective over the data axis).
void add_routing_statistics(LossParts& parts, const cpu::RoutingPlan& plan, int64_t T, const Mesh& mesh);
// Sets ce, z, n_targets and the total loss of parts from this rank's loss sums
// (means over the global batch's targets; collective over the data axis).
void add_output_loss(LossParts& parts, const cpu::LossSums& sums, const ModelConfig& cfg, const Mesh& mesh);

// Keys and values of every layer for incremental decoding (this rank's heads), on
// the model's device. Model::forward_cached (re)allocates it after reset().
struct KVCache {
  int64_t rows = 0, max_positions = 0, len = 0;  // B, positions it can hold, positions filled
  int64_t width = 0;                        // local heads * d_head
  int64_t n_layers = 0;
  std::vector<Tensor> k, v;                 // [L][B, max_positions, width]
  Tensor scratch;                           // [B, max_positions, width] for reorder
  std::shared_ptr<Arena> arena;
  Backend* backend = nullptr;
  void reset(int64_t rows, int64_t max_positions, int64_t n_layers, int64_t width);
  // Beam search: row r becomes a copy of row parent[r].
  void reorder(const std::vector<int64_t>& parent);
};

// train.shard_weights: how often per step layer l of L is all-gathered with
// micro_steps micro-steps (Model's two alternating windows; the plan counts it).
int64_t layer_weight_gathers(int64_t l, int64_t L, int64_t micro_steps);

class Model {
 public:
  // The backend runs every operation: Device::cpu the CPU kernels, Device::cuda
  // this rank's GPU (make_cuda_backend). The parameter table stays on the host
  // as the checkpoint's copy (on the CPU it is the backend's memory).
  Model(const Config& cfg, const Mesh& mesh, Device device = Device::cpu);
  // Any backend (tests pass the emulated CUDA backend this way).
  Model(const Config& cfg, const Mesh& mesh, std::unique_ptr<Backend> backend);
  ~Model();
  Device device() const { return device_; }
  Backend& backend() { return *be_; }
  ParamTable& params() { return params_; }
  const ParamTable& params() const { return params_; }
  const ModelConfig& config() const { return cfg_; }

  // Forward over this rank's rows of the batch; returns the loss terms.
  // no_drop: route every choice (inference). frozen: reuse routing plans of the
  // previous forward (finite-difference tests hold the top-2 choice fixed this way).
  LossParts forward(const Batch& batch, bool no_drop = false, bool frozen = false);
  // Inference: appends n new tokens per row (ids [B, n]) to the cache and leaves
  // their logits [B*n, Vl] in logits(). Every choice is routed (no capacity drops).
  void forward_cached(KVCache& cache, const std::vector<int32_t>& ids, int64_t n);
  // log P(target) at every position of the last forward with a target (else 0):
  // [T], reduced over the vocabulary shards.
  std::vector<double> target_logprobs() const;

  // Zeroes the gradients (where they live: the GPU's for Device::cuda).
  void zero_grad();
  // Accumulates dLoss/dparam into the gradients for the batch of the last forward
  // and sums them over the data axis (replicas of experts over their replica
  // group): afterwards every shard holds the gradient of the global batch's loss.
  // In a micro-step (set_micro_step) the sum over the data axis waits for the last.
  void backward();
  // The next forwards are micro-steps of one step (MicroStep); MicroStep{} ends that.
  void set_micro_step(const MicroStep& m) { micro_ = m; }
  // The global gradient norm and the optimizer step, where the weights live.
  double grad_norm();
  void optimizer_step(Adafactor& opt, double lr, int64_t t);
  // Device::cuda: copy weights, gradients (and opt's statistics) from the GPU
  // into params() (and opt) before they are read or saved; after params() (and
  // opt) were changed on the host, e.g. by a checkpoint, send them back. No-ops
  // on the CPU.
  void sync_to_host(Adafactor* opt = nullptr);
  void sync_to_device(const Adafactor* opt = nullptr);
  // The gradients into params()[i].g (CUDA keeps them on the device only).
  void grads_to_host();
  // The training step, for decisions that vary per step (GShard's random second-expert policy).
  void set_step(int64_t step) { step_ = step; }
  // Logits [T, Vl] of the last forward (this rank's vocabulary shard), on the host.
  const std::vector<float>& logits() const;
  // Named activations of the last forward, for debugging and tests.
  const std::vector<LayerActs>& layer_acts() const { return acts_; }
  const ExpertPlacement& experts() const { return place_; }
  // CPU only: the readable reference kernels instead of the fast ones (the
  // default), and the GEMM operand precision (gemm.h; `[train] cpu_precision`).
  void use_reference_kernels(bool on);
  void set_cpu_precision(cpu::Precision p);
  cpu::Precision cpu_precision() const { return gemm_; }
  // Seconds per phase (attention, router, dispatch, experts, combine, dense_ffn,
  // output, grad_reduce, optimizer; the backend's clock), and bytes of the arenas.
  PhaseTimers timers;
  // Waits for the phases still running on the device and adds them to timers.
  void finish_phases();
  size_t activation_bytes() const;

 private:
  void plan_buffers(int64_t B, int64_t S, bool no_drop, bool decode);
  void size_expert_rows(int64_t l, int64_t n);
  void size_expert_grads(int64_t n);
  void upload_batch(const std::vector<int32_t>& ids, const std::vector<int32_t>* targets,
                    const std::vector<int32_t>* segments);
  void attention_forward(int64_t l, const Tensor& x);
  void attention_backward(int64_t l);
  void dense_forward(int64_t l, Tensor out);
  void dense_backward(int64_t l, const Tensor& dout);
  void layer_forward(int64_t l, Tensor ffn_out, bool no_drop, bool frozen, bool recompute);
  void gather_layer_weights(int64_t l, int64_t next);
  void size_expert_out(int64_t layer, int64_t n);
  void moe_forward(int64_t l, Tensor out, bool no_drop, bool frozen, bool recompute);
  void share_layer_views();
  void moe_backward(int64_t l, const Tensor& dout);
  void output_forward(const Tensor& x);
  void output_backward();
  void decode_attention(int64_t l, const Tensor& x, KVCache& cache, int64_t n);
  void ensure_cache(KVCache& cache);
  void rebind(std::unique_ptr<Backend> backend);
  size_t pid(int64_t l, const char* what) const;  // index of a layer's parameter in the table
  cpu::Act expert_act() const { return cfg_.expert_act == "gelu" ? cpu::Act::gelu : cpu::Act::relu; }
  Tensor w(size_t i) { return be_->gemm_weight(i); }
  Tensor w32(size_t i) { return be_->weight(i); }
  Tensor g(size_t i) { return be_->grad(i); }

  ModelConfig cfg_;
  const Mesh& mesh_;
  uint64_t seed_;
  int64_t step_ = 0;
  MicroStep micro_;
  bool remat_ = false;        // train.remat
  bool bf16_exchanges_ = false;  // train.exchange_dtype = bf16
  int64_t exchange_chunks_ = 1;  // train.exchange_chunks: each MoE all-to-all in this many chunks
  std::vector<std::vector<size_t>> layer_params_;  // [L] table indices of each layer's tensors
  std::vector<size_t> outer_params_;                // the embedding and the final norm
  bool shared_acts_ = false;  // remat in a training shape: layers share one set of activations but x
  Device device_ = Device::cpu;
  ParamTable params_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Arena> acts_arena_;
  std::vector<std::unique_ptr<Arena>> expert_arenas_;  // [L] each MoE layer's expert rows
  std::unique_ptr<Arena> expert_grads_;                // the experts' backward rows
  std::unique_ptr<Arena> expert_out_;                  // xout, shared by the MoE layers
  Tensor xout_;                                        // [expert_out_rows_, M]
  int64_t expert_out_rows_ = 0;
  ExpertPlacement place_;
  int64_t nh_, H_, V_, v0_;        // local heads, local hidden, local vocab, first vocab id
  size_t p_emb_ = 0, p_final_ = 0;  // indices of the embedding and the final norm scale
  std::unordered_map<std::string, size_t> index_;  // parameter name -> table index
  bool planned_decode_ = false;
  bool have_targets_ = false;       // the last forward had targets (not decoding)
  std::vector<int32_t> targets_host_;  // [T] a copy: backward never reads the caller's batch
  int64_t B_ = 0, S_ = 0, T_ = 0;
  bool planned_no_drop_ = false;
  int64_t rows_max_ = 0, recv_max_ = 0;  // MoE buffer rows
  LossParts parts_;
  Tensor ids_, targets_, segments_;      // [T] i32
  std::vector<LayerActs> acts_;   // [L]
  GradActs grads_;
  Tensor x_final;                 // [T, M] f32 residual after the last layer
  Tensor xnf, rstdf;              // [T, M] gemm, [T] f32 final RMSNorm
  Tensor logits_, lse_;           // [T, Vl] f32 (h * M^-0.5) @ Emb^T, [T] f32
  mutable std::vector<float> logits_host_, lse_host_;
  mutable bool host_outputs_stale_ = true;
  void fetch_outputs() const;
  bool reference_kernels_ = false;
  cpu::Precision gemm_ = cpu::Precision::fp32;
};

}  // namespace glam
