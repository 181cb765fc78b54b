// A GLaM decoder on this rank's shard of the mesh: forward is a flat list of layer
// calls over the residual stream, backward its mirror in reverse order. Every
// activation the backward needs is a named buffer with its shape.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "glam/config.h"
#include "glam/corpus.h"
#include "glam/device.h"
#include "glam/exchange.h"
#include "glam/layers_fast.h"
#include "glam/mesh.h"
#include "glam/moe.h"
#include "glam/params.h"
#include "glam/timers.h"

namespace glam::cuda { class Engine; }
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

struct LayerActs {
  std::vector<float> x;         // [T, M] residual stream entering the layer
  std::vector<float> xn1;       // [T, M] RMSNorm before attention
  std::vector<float> rstd1;     // [T]
  std::vector<float> q, k, v;   // [T, nh*dh] this rank's heads
  std::vector<float> probs;     // [B, nh, S, S] attention probabilities
  std::vector<float> att;       // [T, nh*dh] attention output before Wo
  std::vector<float> x_mid;     // [T, M] residual after attention
  std::vector<float> xn2;       // [T, M] RMSNorm before the FFN
  std::vector<float> rstd2;     // [T]
  // dense GEGLU layers
  std::vector<float> a0, a1, h; // [T, H] gelu(a0) * a1 = h
  // MoE layers
  std::vector<float> router_logits;  // [T, E]
  cpu::RoutingPlan plan;
  std::vector<float> ein;       // [rows, M] dispatched tokens, router order (all E experts)
  ExchangePlan xplan;           // who sends how many rows to whom over the data axis
  std::vector<float> xin;       // [n_recv, M] rows for this rank's experts, local expert-major
  std::vector<float> pre, eh;   // [n_recv, H] expert pre-activation and activation
  std::vector<float> xout;      // [n_recv, M] this rank's expert outputs
  std::vector<float> eout;      // [rows, M] expert outputs back in router order
};

// The router's options for MoE layer `layer` at training step `step`, T tokens on
// this rank (no_drop: inference). Every backend routes with these.
cpu::RouterOptions router_options(const ModelConfig& cfg, const Mesh& mesh, uint64_t seed, int64_t step,
                                  int64_t layer, int64_t T, bool no_drop);
// Adds one MoE layer's share of the global batch's aux loss, loads and drops to
// parts (collective over the data axis).
void add_routing_statistics(LossParts& parts, const cpu::RoutingPlan& plan, int64_t T, const Mesh& mesh);
// Sets ce, z, n_targets and the total loss of parts from this rank's loss sums
// (means over the global batch's targets; collective over the data axis).
void add_output_loss(LossParts& parts, const cpu::LossSums& sums, const ModelConfig& cfg, const Mesh& mesh);

// Keys and values of every layer for incremental decoding (this rank's heads).
struct KVCache {
  int64_t rows = 0, capacity = 0, len = 0;  // B, positions it can hold, positions filled
  int64_t width = 0;                        // local heads * d_head
  std::vector<std::vector<float>> k, v;     // [L][B, capacity, width]
  void reset(int64_t rows, int64_t capacity, int64_t n_layers, int64_t width);
  // Beam search: row r becomes a copy of row parent[r].
  void reorder(const std::vector<int64_t>& parent);
};

class Model {
 public:
  // Device::cuda runs forward and backward on this rank's GPU (cuda/engine.h);
  // the parameters, the optimizer's view of them and inference stay as here.
  Model(const Config& cfg, const Mesh& mesh, Device device = Device::cpu);
  Device device() const { return gpu_ ? Device::cuda : Device::cpu; }
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

  // Accumulates dLoss/dparam into params().g for the batch of the last forward and
  // sums them over the data axis (replicas of experts over their replica group):
  // afterwards every shard holds the gradient of the global batch's loss.
  void backward();
  // The global gradient norm and the optimizer step, where the weights live
  // (for Device::cuda: on the GPU, which holds weights, gradients and the
  // optimizer's statistics between steps).
  double grad_norm() const;
  void optimizer_step(Adafactor& opt, double lr, int64_t t);
  // Device::cuda: copy weights, gradients (and opt's statistics) from the GPU
  // into params() (and opt) before they are read or saved; after params() (and
  // opt) were changed on the host, e.g. by a checkpoint, send them back. No-ops
  // on the CPU.
  void sync_to_host(Adafactor* opt = nullptr);
  void sync_to_device(const Adafactor* opt = nullptr);
  // The training step, for decisions that vary per step (GShard's random second-expert policy).
  void set_step(int64_t step) { step_ = step; }
  // Logits [T, Vl] of the last forward (this rank's vocabulary shard).
  const std::vector<float>& logits() const;
  // Named activations of the last forward, for debugging and tests.
  const std::vector<LayerActs>& layer_acts() const { return acts_; }
  const ExpertPlacement& experts() const { return place_; }
  // The readable reference kernels instead of the fast ones (the default), for
  // tests that compare the two on the whole model.
  void use_reference_kernels(bool on) { kern_ = on ? cpu::Kernels::reference() : cpu::Kernels::fast(); }
  // Operand precision of the CPU GEMMs (gemm.h; `[train] cpu_precision`): fp32 by
  // default, bf16 for speed. The CUDA backend always multiplies in bf16.
  void set_cpu_precision(cpu::Precision p) { gemm_ = p; }
  cpu::Precision cpu_precision() const { return gemm_; }
  // Seconds per phase (attention, router, dispatch, experts, combine, dense_ffn, output).
  PhaseTimers timers;

 private:
  void attention_forward(int64_t l);
  void attention_backward(int64_t l, std::vector<float>& dx);
  void dense_forward(int64_t l, std::vector<float>& out);
  void dense_backward(int64_t l, const std::vector<float>& dout, std::vector<float>& dxn);
  void moe_forward(int64_t l, std::vector<float>& out, bool no_drop, bool frozen);
  void moe_backward(int64_t l, const std::vector<float>& dout, std::vector<float>& dxn);
  std::string pname(int64_t l, const char* what) const;
  void reduce_gradients();
  cpu::Act expert_act() const { return cfg_.expert_act == "gelu" ? cpu::Act::gelu : cpu::Act::relu; }

  ModelConfig cfg_;
  const Mesh& mesh_;
  uint64_t seed_;
  int64_t step_ = 0;
  ParamTable params_;
  ExpertPlacement place_;
  int64_t nh_, H_, V_, v0_;        // local heads, local hidden, local vocab, first vocab id
  const Batch* batch_ = nullptr;
  int64_t B_ = 0, S_ = 0, T_ = 0;
  LossParts parts_;
  std::vector<LayerActs> acts_;   // [L]
  std::vector<float> x_final;     // [T, M] residual after the last layer
  std::vector<float> xnf, rstdf;  // [T, M], [T] final RMSNorm
  mutable std::vector<float> logits_;  // [T, Vl] (h * M^-0.5) @ Emb^T
  mutable std::vector<float> lse_;     // [T]
  std::shared_ptr<cuda::Engine> gpu_;  // set for Device::cuda
  mutable bool gpu_outputs_stale_ = false;  // logits_/lse_ still on the GPU
  void fetch_gpu_outputs() const;
  std::vector<float> dlogits_;    // [T, Vl] backward scratch, kept between steps
  cpu::Kernels kern_ = cpu::Kernels::fast();
  cpu::Precision gemm_ = cpu::Precision::fp32;
};

}  // namespace glam
