// The operations GLaM's model is written in, implemented once per backend:
//   cpu  (src/layers/cpu/backend.cpp):  the readable reference kernels or the fast ones,
//                                fp32 or bf16 GEMM operands (cpu::Precision);
//   cuda (src/layers/cuda/backend.cu):  glam::cuda kernels and cuBLAS on one GPU per rank.
// Model (model.cpp) states the layer order once and calls only these.
//
// Conventions (llm.c): outputs, then inputs, then sizes; forward overwrites its
// outputs, backward ACCUMULATES (+=) into input and weight gradients. Tensors are
// views (tensor.h) on the backend's device; dtypes are the model's choice:
// activations that feed a GEMM are gemm_dtype(), everything else fp32. A backend
// converts internally when a kernel wants another precision. T = tokens of this
// rank, M = d_model, A = local heads * d_head, H = local hidden, Vl = local
// vocabulary, E = experts.
// Communication goes through the mesh the backend was made with; a backend only
// decides where the bytes are when MPI sees them (device or staged on the host).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/model/config.h"
#include "glam/mesh/exchange.h"
#include "glam/layers/cpu/layers.h"
#include "glam/mesh/mesh.h"
#include "glam/model/moe.h"
#include "glam/model/params.h"
#include "glam/model/tensor.h"
#include "glam/base/timers.h"

namespace glam {

class Adafactor;

// One MoE layer's routing decisions for this rank's T tokens.
struct Routing {
  // cpu: every field. cuda: the summary the host needs (T, E, group_size,
  // capacity, n_groups_global, expert_offset, load_before, load_after, aux, dropped).
  cpu::RoutingPlan plan;
  // cuda only (device): gates [T, E], expert/slot/row [T, 2] i32, g [T, 2], kept [T, 2] u8,
  // first_frac [G, E].
  Tensor gates, expert, g, kept, slot, row, first_frac;
};

// What a backend did, for tests and the log.
struct BackendStats {
  int64_t allocations = 0;   // device (or host arena) allocations
  int64_t syncs = 0;         // host waits on the device (stream or device synchronisations)
};

class Backend : public Allocator {
 public:
  ~Backend() override = default;
  virtual std::string name() const = 0;
  virtual DType gemm_dtype() const = 0;  // f32 (cpu), bf16 (cuda)
  const BackendStats& stats() const { return stats_; }
  // train.exchange_dtype = bf16: the expert all-to-all and the model-axis sums of
  // activations travel as bfloat16 (the losses' and the optimizer's sums stay fp32).
  void set_bf16_exchanges(bool on) { bf16_exchanges_ = on; }

  // ---- parameters: the table's fp32 master weights, gradients, GEMM copies ----
  // cpu: views of the table's vectors. cuda: one device allocation in table order.
  virtual void bind_params(ParamTable& table) = 0;
  virtual Tensor weight(size_t i) = 0;       // fp32 master weights of table.params[i]
  virtual Tensor gemm_weight(size_t i) = 0;  // what the GEMMs read (cuda: bf16 copy)
  virtual Tensor grad(size_t i) = 0;         // fp32 gradient
  virtual void refresh_gemm_weights() = 0;   // after an update: remake the GEMM copies
  virtual void zero_grads() = 0;
  // cuda: copy weights (and opt's statistics) to the table (and opt) and back;
  // no-ops on the cpu, where they are the same memory. The gradients stay on the
  // device (cuda frees the table's host copies in bind_params); grads_to_host
  // fills them, for tests and tools that read them.
  virtual void params_to_host(ParamTable& table, Adafactor* opt) = 0;
  virtual void params_to_device(const ParamTable& table, const Adafactor* opt) = 0;
  virtual void grads_to_host(ParamTable& table) = 0;
  // Sums gradients of parameters replicated over data (experts: over their replicas);
  // tensors sharded over data (Param::zero_sharded) get the sum of their rows only.
  virtual void reduce_gradients(const ParamTable& table, const ExpertPlacement& place) = 0;
  // train.shard_state: a tensor sharded over data keeps only its rows' gradient
  // (Param::g [zero_rows, ...]). While a window is open grad(i) of such a tensor in
  // ids is a whole-tensor buffer; close_grads reduce-scatters it over data and adds
  // this rank's rows to Param::g. Window 0 spans the whole backward (embedding and
  // final norm), window 1 one layer's. Tensors not sharded: no-ops.
  virtual void open_grads(const ParamTable& table, const std::vector<size_t>& ids, int window) = 0;
  virtual void close_grads(ParamTable& table, const std::vector<size_t>& ids) = 0;
  // train.shard_weights: starts gathering over data the whole shard of each tensor
  // of ids that keeps only this rank's rows (Param::w_on_shard) into window `slot`
  // (0: embedding and final norm, 1 and 2: the layers in turn), without waiting;
  // weight(i) waits for tensor i. A window that holds ids since the last update
  // stays as it is. Tensors not sharded: no-ops.
  virtual void gather_weights(const ParamTable& table, const std::vector<size_t>& ids, int slot) = 0;
  virtual double grad_norm(const ParamTable& table) = 0;
  virtual void optimizer_step(ParamTable& table, Adafactor& opt, double lr, int64_t t) = 0;

  // ---- memory ----------------------------------------------------------------
  virtual void upload(Tensor dst, const void* host) = 0;     // dst.bytes() from host
  virtual void download(void* host, const Tensor& src) = 0;  // waits for the device
  virtual void copy(Tensor dst, const Tensor& src) = 0;      // same dtype and size
  virtual void zero(Tensor t) = 0;
  virtual void add_into(Tensor y, const Tensor& x) = 0;      // y += x, f32
  virtual void sync() = 0;                                   // wait for queued work

  // ---- collectives over the mesh (in place, f32) -------------------------------
  virtual void allreduce_sum_model(Tensor x) = 0;
  // dispatched [rows, M] (router order) -> expert_rows [n_recv, M] (local expert-major), and back.
  virtual void send_to_experts(Tensor expert_rows, const Tensor& dispatched, const ExchangePlan& x, int64_t M) = 0;
  virtual void return_from_experts(Tensor dispatched, const Tensor& expert_rows, const ExchangePlan& x,
                                   int64_t M) = 0;
  // train.exchange_chunks > 1: the same exchange in chunks (ChunkedExchange, exchange.h),
  // each started without waiting and finished later, expert_rows chunk-major.
  // Backends without them refuse (the model refuses first, naming the key).
  virtual void start_send_chunk(ChunkedExchange& cx, int64_t c, const Tensor& dispatched, int64_t M) {
    refuse_chunks();
  }
  virtual void finish_send_chunk(ChunkedExchange& cx, int64_t c, Tensor expert_rows, int64_t M) { refuse_chunks(); }
  virtual void start_return_chunk(ChunkedExchange& cx, int64_t c, const Tensor& expert_rows, int64_t M) {
    refuse_chunks();
  }
  virtual void finish_return_chunk(ChunkedExchange& cx, int64_t c, Tensor dispatched, int64_t M) {
    refuse_chunks();
  }
  virtual void progress_chunks(ChunkedExchange& cx) { refuse_chunks(); }

  // ---- layers (layers.h, moe.h state the math) -----------------------------------
  virtual void embedding_forward(Tensor out, const Tensor& ids, const Tensor& emb, int64_t T, int64_t M,
                                 int64_t row0, int64_t rows) = 0;
  virtual void embedding_backward(Tensor demb, const Tensor& dout, const Tensor& ids, int64_t T, int64_t M,
                                  int64_t row0, int64_t rows) = 0;
  // out [T, M] in its own dtype; out_f32, when not empty, receives an fp32 copy (the router's input).
  virtual void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& g, int64_t T, int64_t M,
                               Tensor out_f32) = 0;
  virtual void rmsnorm_backward(Tensor dx, Tensor dg, const Tensor& dout, const Tensor& x, const Tensor& g,
                                const Tensor& rstd, int64_t T, int64_t M) = 0;
  // out[T,N] = in[T,K] @ w[K,N] with GEMM operands; din += dout w^T, dw += in^T dout.
  virtual void matmul_forward(Tensor out, const Tensor& in, const Tensor& w, int64_t T, int64_t K, int64_t N) = 0;
  virtual void matmul_backward(Tensor din, Tensor dw, const Tensor& dout, const Tensor& in, const Tensor& w,
                               int64_t T, int64_t K, int64_t N) = 0;
  // The same in fp32 operands on every backend (the router); w is the master weight.
  virtual void matmul_fp32_forward(Tensor out, const Tensor& in, const Tensor& w, int64_t T, int64_t K,
                                   int64_t N) = 0;
  virtual void matmul_fp32_backward(Tensor din, Tensor dw, const Tensor& dout, const Tensor& in, const Tensor& w,
                                    int64_t T, int64_t K, int64_t N) = 0;
  virtual void logits_forward(Tensor logits, const Tensor& h, const Tensor& emb, int64_t T, int64_t M, int64_t Vl,
                              float scale) = 0;
  virtual void logits_backward(Tensor dh, Tensor demb, const Tensor& dlogits, const Tensor& h, const Tensor& emb,
                               int64_t T, int64_t M, int64_t Vl, float scale) = 0;
  // What attention_forward saves for its backward: cpu the softmax statistics
  // [B, nh, S, 2] (row max, 1/denominator), cuda (flash) the log-sum-exp [B, nh, S],
  // cuda without flash the probabilities [B, nh, S, S].
  virtual std::vector<int64_t> attention_state_shape(int64_t B, int64_t S, int64_t nh) const = 0;
  virtual void attention_forward(Tensor out, Tensor state, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& rb, const Tensor& segments, int64_t B, int64_t S, int64_t nh,
                                 int64_t dh) = 0;
  virtual void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor drb, const Tensor& dout,
                                  const Tensor& state, const Tensor& out, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& rb, const Tensor& segments, int64_t B, int64_t S,
                                  int64_t nh, int64_t dh) = 0;
  // KV-cache attention (layers.h attention_decode); kc, vc [B, cap, A].
  virtual void attention_decode(Tensor out, const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& rb,
                                int64_t B, int64_t n, int64_t len, int64_t cap, int64_t nh, int64_t dh) = 0;
  // cache[b, pos0 + j] = x[b, j] for j < n: x [B, n, A], cache [B, cap, A].
  virtual void kv_append(Tensor cache, const Tensor& x, int64_t B, int64_t n, int64_t pos0, int64_t cap,
                         int64_t A) = 0;
  virtual void geglu_forward(Tensor h, const Tensor& a0, const Tensor& a1, int64_t n) = 0;
  virtual void geglu_backward(Tensor da0, Tensor da1, const Tensor& dh, const Tensor& a0, const Tensor& a1,
                              int64_t n) = 0;
  // Loss sums over this rank's rows (the vocabulary reductions go over the model axis).
  virtual cpu::LossSums softmax_xent_forward(Tensor lse, const Tensor& logits, const Tensor& targets, int64_t T,
                                             int64_t Vl, int64_t v0) = 0;
  virtual void softmax_xent_backward(Tensor dlogits, const Tensor& logits, const Tensor& lse, const Tensor& targets,
                                     int64_t T, int64_t Vl, int64_t v0, float ce_scale, float z_scale) = 0;

  // ---- MoE: route -> dispatch -> experts -> combine ----------------------------
  // logits [T, E] fp32. frozen (cpu only): reuse its choices (finite differences).
  virtual void route(Routing& r, const Tensor& logits, int64_t T, const cpu::RouterOptions& opt,
                     const Routing* frozen) = 0;
  virtual void router_backward(Tensor dlogits, const Tensor& dweight, double aux_grad, const Routing& r) = 0;
  virtual void dispatch_forward(Tensor expert_in, const Tensor& x, const Routing& r, int64_t M) = 0;
  virtual void dispatch_backward(Tensor dx, const Tensor& dexpert_in, const Routing& r, int64_t M) = 0;
  virtual void combine_forward(Tensor out, const Tensor& expert_out, const Routing& r, int64_t M) = 0;
  // dexpert_out [rows, M] and dweight [T, 2] overwritten.
  virtual void combine_backward(Tensor dexpert_out, Tensor dweight, const Tensor& dout, const Tensor& expert_out,
                                const Routing& r, int64_t M) = 0;
  virtual void experts_forward(Tensor y, Tensor pre, Tensor h, const Tensor& x, const Tensor& wi, const Tensor& wo,
                               const std::vector<int64_t>& offsets, int64_t M, int64_t H, cpu::Act act) = 0;
  virtual void experts_backward(Tensor dx, Tensor dwi, Tensor dwo, Tensor dh_scratch, const Tensor& dy,
                                const Tensor& x, const Tensor& pre, const Tensor& h, const Tensor& wi,
                                const Tensor& wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                                cpu::Act act) = 0;

  // ---- phases: wall clock on the cpu, CUDA events on the gpu -------------------------
  virtual void phase_begin(const char* name) = 0;
  virtual void phase_end(const char* name) = 0;
  // Adds the phases finished since the last call to timers; wait: also those still
  // running on the device (cuda; without it, collecting never waits).
  virtual void collect_phases(PhaseTimers& timers, bool wait) = 0;

 protected:
  BackendStats stats_;
  bool bf16_exchanges_ = false;
  [[noreturn]] void refuse_chunks() const {
    throw UserError(msg("train.exchange_chunks > 1 runs on the CPU backend only so far, not on ", name(),
                        "; set train.exchange_chunks 1"));
  }
};

// The CPU backend: reference or fast kernels, GEMM operands in precision p.
std::unique_ptr<Backend> make_cpu_backend(const Mesh& mesh, bool reference_kernels, cpu::Precision p);
// The CUDA backend on this rank's GPU (device.h selects it). In a build without
// CUDA it throws UserError.
std::unique_ptr<Backend> make_cuda_backend(const Config& cfg, const Mesh& mesh);

// Times the enclosing scope into a phase of the backend.
class BackendPhase {
 public:
  BackendPhase(Backend& be, const char* name) : be_(be), name_(name) { be_.phase_begin(name_); }
  ~BackendPhase() { be_.phase_end(name_); }
  BackendPhase(const BackendPhase&) = delete;
  BackendPhase& operator=(const BackendPhase&) = delete;
 private:
  Backend& be_;
  const char* name_;
};

}  // namespace glam
