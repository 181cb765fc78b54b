// The CUDA backend: backend.h's operations with the glam::cuda kernels and cuBLAS
// on this rank's GPU. Glue only: dtype conversions around the kernels, the
// device parameter table, staging for an MPI that cannot take device pointers,
// and CUDA-event phase timers.
//
// Memory: the parameters (fp32 masters, fp32 gradients, bf16 GEMM copies, in the
// table's order) are one allocation; the model's activations are another (its
// arena); conversions use a scratch arena that grows to the largest step and
// then stays; collectives stage through pinned host memory that does the same.
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include <cmath>
#include <cstring>
#include <string>

#include "glam/model/adafactor.h"
#include "glam/model/backend.h"
#include "glam/base/check.h"
#include "glam/layers/cuda/optimizer.h"
#include "glam/layers/cuda/routing.h"
#include "glam/layers/cuda/decode.h"
#include "glam/layers/cuda/layers.h"
#include "glam/mesh/device.h"
#include "glam/mesh/exchange.h"
#include "buckets.cuh"
#include "phase_events.h"

namespace glam {

namespace {

using cuda::bf16;

bool mpi_is_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

// The mesh's copy on a data axis of one rank, for device rows (mesh.h).
void device_copy(void* dst, const void* src, size_t bytes) {
  GLAM_CHECK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

bf16* b16(const Tensor& t) { return reinterpret_cast<bf16*>(t.bf16()); }
float* f32_or_null(const Tensor& t) { return t.ptr ? t.f32() : nullptr; }

class CudaBackend final : public Backend {
 public:
  CudaBackend(const Config& cfg, const Mesh& mesh)
      : cfg_(cfg.model), mesh_(mesh), aware_(mpi_is_cuda_aware()), scratch_(*this), phases_(ctx_.stream()) {
    const char* kind = std::getenv("GLAM_CUDA_ATTENTION");  // "naive" forces the reference kernel
    flash_ = cuda::flash_attention_supports(cfg_.d_head) && !(kind && std::string(kind) == "naive");
  }
  ~CudaBackend() override {
    if (pinned_) GLAM_WARN_CUDA(cudaFreeHost(pinned_));
    if (summary_) GLAM_WARN_CUDA(cudaFreeHost(summary_));
  }

  std::string name() const override { return cuda_device_name() + (flash_ ? " (flash attention)" : ""); }
  Device device() const override { return Device::cuda; }
  DType gemm_dtype() const override { return DType::bf16; }

  void* allocate(size_t bytes) override {
    void* p = nullptr;
    GLAM_CHECK_CUDA(cudaMalloc(&p, bytes));
    stats_.allocations++;
    return p;
  }
  void deallocate(void* p) override { GLAM_WARN_CUDA(cudaFree(p)); }

  // ---- parameters ------------------------------------------------------------------
  // Three tensors in table order, each parameter at an offset padded to 128
  // elements (aligned views; the padding is zero), so a run of parameters is
  // one contiguous range for conversions, zeroing and reductions.
  void bind_params(ParamTable& table) override {
    const size_t n = table.params.size();
    offset_.assign(n + 1, 0);
    for (size_t i = 0; i < n; i++) offset_[i + 1] = offset_[i] + (table.params[i].size() + 127) / 128 * 128;
    params_ = std::make_unique<Arena>(*this);
    params_->add(w_all_, "params/w", DType::f32, {std::max<int64_t>(1, offset_[n])});
    params_->add(g_all_, "params/g", DType::f32, {std::max<int64_t>(1, offset_[n])});
    params_->add(w16_all_, "params/w16", DType::bf16, {std::max<int64_t>(1, offset_[n])});
    params_->add(norm_partial_, "grad_norm/partial", DType::f64, {cuda::norm_partials()});
    params_->add(norm_sums_, "grad_norm/sums", DType::f64, {static_cast<int64_t>(n + 1)});
    params_->commit();
    zero(w_all_);
    w_.assign(n, Tensor{}); g_.assign(n, Tensor{}); w16_.assign(n, Tensor{});
    for (size_t i = 0; i < n; i++) {
      const int64_t size = table.params[i].size();
      w_[i] = w_all_.rows(offset_[i], size);
      g_[i] = g_all_.rows(offset_[i], size);
      w16_[i] = w16_all_.rows(offset_[i], size);
    }
    params_to_device(table, nullptr);
    zero_grads();
    for (Param& p : table.params) std::vector<float>().swap(p.g);  // the gradients live here
  }
  Tensor weight(size_t i) override { return w_.at(i); }
  Tensor gemm_weight(size_t i) override { return w16_.at(i); }
  Tensor grad(size_t i) override { return g_.at(i); }
  void refresh_gemm_weights() override {
    cuda::to_bf16(ctx_, b16(w16_all_), w_all_.f32(), w_all_.numel());  // one conversion for all
  }
  void zero_grads() override { zero(g_all_); }
  void params_to_host(ParamTable& table, Adafactor* opt) override {
    for (size_t i = 0; i < table.params.size(); i++) {
      download(table.params[i].w.data(), w_[i]);
    }
    if (opt && adafactor_) adafactor_->store(*opt);
  }
  void grads_to_host(ParamTable& table) override {
    for (size_t i = 0; i < table.params.size(); i++) {
      table.params[i].g.resize(table.params[i].size());
      download(table.params[i].g.data(), g_[i]);
    }
  }
  void params_to_device(const ParamTable& table, const Adafactor* opt) override {
    for (size_t i = 0; i < table.params.size(); i++) upload(w_[i], table.params[i].w.data());
    refresh_gemm_weights();
    if (opt) optimizer_for(table, *opt).load(*opt);
  }
  // Runs of consecutive parameters with the same reduction go in one call.
  void reduce_gradients(const ParamTable& table, const ExpertPlacement& place) override {
    if (mesh_.data_size == 1) return;  // nothing is replicated over data
    const size_t n = table.params.size();
    for (size_t i = 0; i < n;) {
      const int kind = reduction_kind(table.params[i]);
      size_t j = i;
      while (j < n && reduction_kind(table.params[j]) == kind) j++;
      const int64_t count = offset_[j] - offset_[i];  // with the zero padding
      float* g = g_[i].f32();
      if (kind == 1) reduce(g, count, [&](float* x) { mesh_.allreduce_sum_data(x, count); });
      if (kind == 2) reduce(g, count, [&](float* x) { mesh_.allreduce_sum_replicas(x, count, place); });
      i = j;
    }
  }
  // train.shard_state runs on the CPU backend only (Model refuses it here): nothing is sharded.
  void open_grads(const ParamTable&, const std::vector<size_t>&, int) override {}
  void gather_weights(const ParamTable&, const std::vector<size_t>&, int) override {}
  void close_grads(ParamTable&, const std::vector<size_t>&) override {}
  double grad_norm(const ParamTable& table) override {
    stats_.syncs++;
    return cuda::gradient_norm(ctx_, table, g_, mesh_, norm_partial_, norm_sums_, host_sums_);
  }
  void optimizer_step(ParamTable& table, Adafactor& opt, double lr, int64_t t) override {
    cuda::DeviceAdafactor& a = optimizer_for(table, opt);
    a.step(ctx_, table, w_, g_, lr, t, mesh_, [&](double* d, int64_t n) { reduce_model_f64(d, n); });
    refresh_gemm_weights();
  }

  // ---- memory -------------------------------------------------------------------------
  // From pageable memory the copy is staged before cudaMemcpyAsync returns, so
  // the host buffer may go away at once and no wait is needed.
  void upload(Tensor dst, const void* host) override {
    if (dst.bytes()) GLAM_CHECK_CUDA(cudaMemcpyAsync(dst.ptr, host, dst.bytes(), cudaMemcpyHostToDevice, ctx_.stream()));
  }
  void download(void* host, const Tensor& src) override {
    if (src.bytes()) GLAM_CHECK_CUDA(cudaMemcpyAsync(host, src.ptr, src.bytes(), cudaMemcpyDeviceToHost, ctx_.stream()));
    sync();
  }
  void copy(Tensor dst, const Tensor& src) override {
    GLAM_ASSERT(dst.dtype == src.dtype && dst.numel() == src.numel());
    if (src.bytes())
      GLAM_CHECK_CUDA(cudaMemcpyAsync(dst.ptr, src.ptr, src.bytes(), cudaMemcpyDeviceToDevice, ctx_.stream()));
  }
  void zero(Tensor t) override {
    if (t.bytes()) GLAM_CHECK_CUDA(cudaMemsetAsync(t.ptr, 0, t.bytes(), ctx_.stream()));
  }
  void add_into(Tensor y, const Tensor& x) override { cuda::add_into(ctx_, y.f32(), x.f32(), y.numel()); }
  void sync() override {
    ctx_.sync();
    stats_.syncs++;
  }

  // ---- collectives ----------------------------------------------------------------------
  void allreduce_sum_model(Tensor x) override {
    if (mesh_.model_size > 1) reduce(x.f32(), x.numel(), [&](float* p) { mesh_.allreduce_sum_model(p, x.numel()); });
  }
  void send_to_experts(Tensor expert_rows, const Tensor& dispatched, const ExchangePlan& x, int64_t M) override {
    scratch_.reset();
    Tensor received = scratch_f32(x.n_recv() * M);
    alltoallv(dispatched.f32(), x.send_rows, received.f32(), x.recv_rows, M);
    regroup(expert_rows.f32(), received.f32(), x, true, M);
  }
  void return_from_experts(Tensor dispatched, const Tensor& expert_rows, const ExchangePlan& x,
                           int64_t M) override {
    scratch_.reset();
    Tensor outgoing = scratch_f32(x.n_recv() * M);
    regroup(outgoing.f32(), expert_rows.f32(), x, false, M);
    alltoallv(outgoing.f32(), x.recv_rows, dispatched.f32(), x.send_rows, M);
  }

  // ---- layers ---------------------------------------------------------------------------
  void embedding_forward(Tensor out, const Tensor& ids, const Tensor& emb, int64_t T, int64_t M, int64_t row0,
                         int64_t rows) override {
    cuda::embedding_forward(ctx_, out.f32(), ids.i32(), emb.f32(), T, M, row0, rows);
  }
  void embedding_backward(Tensor demb, const Tensor& dout, const Tensor& ids, int64_t T, int64_t M, int64_t row0,
                          int64_t rows) override {
    cuda::embedding_backward(ctx_, demb.f32(), dout.f32(), ids.i32(), T, M, row0, rows);
  }
  void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& g, int64_t T, int64_t M,
                       Tensor out_f32) override {
    cuda::rmsnorm_forward(ctx_, b16(out), rstd.f32(), x.f32(), g.f32(), T, M, f32_or_null(out_f32));
  }
  void rmsnorm_backward(Tensor dx, Tensor dg, const Tensor& dout, const Tensor& x, const Tensor& g,
                        const Tensor& rstd, int64_t T, int64_t M) override {
    cuda::rmsnorm_backward(ctx_, dx.f32(), dg.f32(), dout.f32(), x.f32(), g.f32(), rstd.f32(), T, M);
  }
  void matmul_forward(Tensor out, const Tensor& in, const Tensor& w, int64_t T, int64_t K, int64_t N) override {
    scratch_.reset();
    cuda::matmul_forward(ctx_, out.f32(), as_bf16(in), b16(w), T, K, N);
  }
  void matmul_backward(Tensor din, Tensor dw, const Tensor& dout, const Tensor& in, const Tensor& w, int64_t T,
                       int64_t K, int64_t N) override {
    scratch_.reset();
    cuda::matmul_backward(ctx_, f32_or_null(din), f32_or_null(dw), as_bf16(dout), as_bf16(in), b16(w), T, K, N);
  }
  void matmul_fp32_forward(Tensor out, const Tensor& in, const Tensor& w, int64_t T, int64_t K,
                           int64_t N) override {
    cuda::gemm_f32(ctx_, false, false, T, N, K, 1.0f, in.f32(), K, w.f32(), N, 0.0f, out.f32(), N);
  }
  void matmul_fp32_backward(Tensor din, Tensor dw, const Tensor& dout, const Tensor& in, const Tensor& w, int64_t T,
                            int64_t K, int64_t N) override {
    if (din.ptr) cuda::gemm_f32(ctx_, false, true, T, K, N, 1.0f, dout.f32(), N, w.f32(), N, 1.0f, din.f32(), K);
    if (dw.ptr) cuda::gemm_f32(ctx_, true, false, K, N, T, 1.0f, in.f32(), K, dout.f32(), N, 1.0f, dw.f32(), N);
  }
  void logits_forward(Tensor logits, const Tensor& h, const Tensor& emb, int64_t T, int64_t M, int64_t Vl,
                      float scale) override {
    cuda::logits_forward(ctx_, logits.f32(), b16(h), b16(emb), T, M, Vl, scale);
  }
  void logits_backward(Tensor dh, Tensor demb, const Tensor& dlogits, const Tensor& h, const Tensor& emb, int64_t T,
                       int64_t M, int64_t Vl, float scale) override {
    scratch_.reset();
    cuda::logits_backward(ctx_, dh.f32(), demb.f32(), as_bf16(dlogits), b16(h), b16(emb), T, M, Vl, scale);
  }
  std::vector<int64_t> attention_state_shape(int64_t B, int64_t S, int64_t nh) const override {
    if (flash_) return {B, nh, S};
    return {B, nh, S, S};
  }
  void attention_forward(Tensor out, Tensor state, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& rb, const Tensor& segments, int64_t B, int64_t S, int64_t nh,
                         int64_t dh) override {
    if (flash_)
      cuda::attention_flash_forward(ctx_, out.f32(), state.f32(), q.f32(), k.f32(), v.f32(), rb.f32(),
                                    segments.i32(), B, S, nh, dh);
    else
      cuda::attention_forward(ctx_, out.f32(), state.f32(), q.f32(), k.f32(), v.f32(), rb.f32(), segments.i32(), B,
                              S, nh, dh);
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor drb, const Tensor& dout, const Tensor& state,
                          const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rb,
                          const Tensor& segments, int64_t B, int64_t S, int64_t nh, int64_t dh) override {
    if (flash_) {
      cuda::attention_flash_backward(ctx_, dq.f32(), dk.f32(), dv.f32(), drb.f32(), dout.f32(), out.f32(),
                                     state.f32(), q.f32(), k.f32(), v.f32(), rb.f32(), segments.i32(), B, S, nh, dh);
    } else {
      scratch_.reset();
      Tensor dA = scratch_f32(B * nh * S * S);
      cuda::attention_backward(ctx_, dq.f32(), dk.f32(), dv.f32(), drb.f32(), dA.f32(), dout.f32(), state.f32(),
                               q.f32(), k.f32(), v.f32(), segments.i32(), B, S, nh, dh);
    }
  }
  void attention_decode(Tensor out, const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& rb,
                        int64_t B, int64_t n, int64_t len, int64_t cap, int64_t nh, int64_t dh) override {
    cuda::attention_decode(ctx_, out.f32(), q.f32(), kc.f32(), vc.f32(), rb.f32(), ctx_.buckets(cap).of_distance.data(),
                           B, n, len, cap, nh, dh);
  }
  void kv_append(Tensor cache, const Tensor& x, int64_t B, int64_t n, int64_t pos0, int64_t cap,
                 int64_t A) override {
    cuda::kv_append(ctx_, cache.f32(), x.f32(), B, n, pos0, cap, A);
  }
  void geglu_forward(Tensor h, const Tensor& a0, const Tensor& a1, int64_t n) override {
    cuda::geglu_forward(ctx_, b16(h), a0.f32(), a1.f32(), n);
  }
  void geglu_backward(Tensor da0, Tensor da1, const Tensor& dh, const Tensor& a0, const Tensor& a1,
                      int64_t n) override {
    cuda::geglu_backward(ctx_, da0.f32(), da1.f32(), dh.f32(), a0.f32(), a1.f32(), n);
  }
  cpu::LossSums softmax_xent_forward(Tensor lse, const Tensor& logits, const Tensor& targets, int64_t T, int64_t Vl,
                                     int64_t v0) override {
    stats_.syncs++;  // the three sums come back to the host
    cuda::ReduceModelRows reduce_model;
    if (mesh_.model_size > 1)
      reduce_model = [&](float* d, int64_t n, bool max) {
        reduce(d, n, [&](float* p) { max ? mesh_.allreduce_max_model(p, n) : mesh_.allreduce_sum_model(p, n); });
      };
    return cuda::softmax_xent_forward(ctx_, lse.f32(), logits.f32(), targets.i32(), T, Vl, v0, reduce_model);
  }
  void softmax_xent_backward(Tensor dlogits, const Tensor& logits, const Tensor& lse, const Tensor& targets,
                             int64_t T, int64_t Vl, int64_t v0, float ce_scale, float z_scale) override {
    cuda::softmax_xent_backward(ctx_, dlogits.f32(), logits.f32(), lse.f32(), targets.i32(), T, Vl, v0, ce_scale,
                                z_scale);
  }

  // ---- MoE ---------------------------------------------------------------------------------
  // Decisions and bookkeeping on the device; the host waits once, for the
  // summary the exchange needs (offsets, loads, drops, aux).
  void route(Routing& r, const Tensor& logits, int64_t T, const cpu::RouterOptions& opt,
             const Routing* frozen) override {
    GLAM_REQUIRE(frozen == nullptr, "frozen routing (finite-difference tests) runs on the CPU only");
    const int64_t E = opt.n_experts, group_size = opt.no_drop ? T : opt.group_size, G = T / group_size;
    cpu::RoutingPlan& p = r.plan;
    p = cpu::RoutingPlan{};
    p.T = T; p.E = E; p.group_size = group_size;
    p.capacity = opt.no_drop ? group_size : cpu::expert_capacity(group_size, opt.capacity_factor, E);
    p.n_groups_global = opt.n_groups_global > 0 ? opt.n_groups_global : G;
    scratch_.reset();
    cuda::RoutingDevice d = routing_view(r);
    d.mean_gate = scratch_f32(G * E).f32();
    d.count = scratch_.take(DType::i32, G * E).i32();
    d.before = scratch_.take(DType::i32, G * E).i32();
    d.start = reinterpret_cast<int64_t*>(scratch_.take(DType::f64, G * E).ptr);
    d.summary = reinterpret_cast<int64_t*>(scratch_.take(DType::f64, 3 * E + 3).ptr);
    cuda::router_decide(ctx_, d, logits.f32(), T, opt);
    int64_t* host = pinned_summary(E);
    cuda::routing_bookkeeping(ctx_, d, host, T, group_size, E, p.n_groups_global, opt.no_drop);
    sync();
    p.expert_offset.assign(host, host + E + 1);
    p.load_before.assign(host + E + 1, host + 2 * E + 1);
    p.load_after.assign(host + 2 * E + 1, host + 3 * E + 1);
    p.dropped = host[3 * E + 1];
    std::memcpy(&p.aux, host + 3 * E + 2, sizeof(double));
  }
  void router_backward(Tensor dlogits, const Tensor& dweight, double aux_grad, const Routing& r) override {
    const cpu::RoutingPlan& p = r.plan;
    cuda::router_backward(ctx_, dlogits.f32(), dweight.f32(), routing_view(r), aux_grad, p.T, p.group_size, p.E,
                          p.n_groups_global);
  }
  void dispatch_forward(Tensor expert_in, const Tensor& x, const Routing& r, int64_t M) override {
    cuda::dispatch_forward_f32(ctx_, expert_in.f32(), b16(x), r.row.i32(), r.plan.T, M);
  }
  void dispatch_backward(Tensor dx, const Tensor& dexpert_in, const Routing& r, int64_t M) override {
    cuda::dispatch_backward(ctx_, dx.f32(), dexpert_in.f32(), r.row.i32(), r.plan.T, M);
  }
  void combine_forward(Tensor out, const Tensor& expert_out, const Routing& r, int64_t M) override {
    cuda::combine_forward(ctx_, out.f32(), expert_out.f32(), r.row.i32(), r.g.f32(), r.kept.u8(), r.plan.T, M);
  }
  void combine_backward(Tensor dexpert_out, Tensor dweight, const Tensor& dout, const Tensor& expert_out,
                        const Routing& r, int64_t M) override {
    cuda::combine_backward(ctx_, dexpert_out.f32(), dweight.f32(), dout.f32(), expert_out.f32(), r.row.i32(),
                           r.g.f32(), r.kept.u8(), r.plan.T, M, dexpert_out.shape[0]);
  }
  void experts_forward(Tensor y, Tensor pre, Tensor h, const Tensor& x, const Tensor& wi, const Tensor& wo,
                       const std::vector<int64_t>& off, int64_t M, int64_t H, cpu::Act act) override {
    scratch_.reset();
    const int64_t n = x.shape[0];
    const bf16* x16 = as_bf16(x);
    for (size_t e = 0; e + 1 < off.size(); e++)
      cuda::matmul_forward(ctx_, pre.f32() + off[e] * H, x16 + off[e] * M, b16(wi) + e * M * H, off[e + 1] - off[e],
                           M, H);
    cuda::act_forward(ctx_, b16(h), pre.f32(), n * H, act);
    for (size_t e = 0; e + 1 < off.size(); e++)
      cuda::matmul_forward(ctx_, y.f32() + off[e] * M, b16(h) + off[e] * H, b16(wo) + e * H * M, off[e + 1] - off[e],
                           H, M);
  }
  void experts_backward(Tensor dx, Tensor dwi, Tensor dwo, Tensor dh_scratch, const Tensor& dy, const Tensor& x,
                        const Tensor& pre, const Tensor& h, const Tensor& wi, const Tensor& wo,
                        const std::vector<int64_t>& off, int64_t M, int64_t H, cpu::Act act) override {
    scratch_.reset();
    const int64_t n = x.shape[0];
    const bf16* dy16 = as_bf16(dy);
    const bf16* x16 = as_bf16(x);
    zero(dh_scratch);
    for (size_t e = 0; e + 1 < off.size(); e++)
      cuda::matmul_backward(ctx_, dh_scratch.f32() + off[e] * H, dwo.f32() + e * H * M, dy16 + off[e] * M,
                            b16(h) + off[e] * H, b16(wo) + e * H * M, off[e + 1] - off[e], H, M);
    Tensor dpre = scratch_f32(n * H);
    zero(dpre);
    cuda::act_backward(ctx_, dpre.f32(), dh_scratch.f32(), pre.f32(), n * H, act);
    const bf16* dpre16 = as_bf16(dpre);
    for (size_t e = 0; e + 1 < off.size(); e++)
      cuda::matmul_backward(ctx_, dx.f32() + off[e] * M, dwi.f32() + e * M * H, dpre16 + off[e] * H,
                            x16 + off[e] * M, b16(wi) + e * M * H, off[e + 1] - off[e], M, H);
  }

  // ---- phases --------------------------------------------------------------------------------
  void phase_begin(const char* name) override { phases_.begin(name); }
  void phase_end(const char* name) override { phases_.end(name); }
  void collect_phases(PhaseTimers& timers, bool wait) override { phases_.collect(timers, wait); }

 private:
  static int reduction_kind(const Param& p) { return p.data_axis < 0 ? 1 : (p.data_replicas > 1 ? 2 : 0); }

  // A bf16 view of t: t itself, or t converted into scratch.
  const bf16* as_bf16(const Tensor& t) {
    if (t.dtype == DType::bf16) return b16(t);
    Tensor c = scratch_.take(DType::bf16, t.numel());
    cuda::to_bf16(ctx_, b16(c), t.f32(), t.numel());
    return b16(c);
  }
  Tensor scratch_f32(int64_t n) { return scratch_.take(DType::f32, n); }

  // An in-place reduction `op` of n floats at d: on the device pointer when MPI
  // is CUDA-aware, else through pinned host memory.
  template <typename Op>
  void reduce(float* d, int64_t n, Op op) {
    if (n == 0) return;
    sync();
    if (aware_) { op(d); return; }
    float* h = pinned(n);
    GLAM_CHECK_CUDA(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    op(h);
    GLAM_CHECK_CUDA(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
  }
  cuda::DeviceAdafactor& optimizer_for(const ParamTable& table, const Adafactor& opt) {
    if (!adafactor_) {
      adafactor_ = std::make_unique<cuda::DeviceAdafactor>(table, opt.options(), *this);
      adafactor_->load(opt);
    }
    return *adafactor_;
  }
  // Sum over the model axis of n doubles on the device (Adafactor's row/column statistics).
  void reduce_model_f64(double* d, int64_t n) {
    if (mesh_.model_size == 1 || n == 0) return;
    sync();
    if (aware_) { mesh_.allreduce_sum_model(d, n); return; }
    host_f64_.resize(n);
    GLAM_CHECK_CUDA(cudaMemcpy(host_f64_.data(), d, n * sizeof(double), cudaMemcpyDeviceToHost));
    mesh_.allreduce_sum_model(host_f64_.data(), n);
    GLAM_CHECK_CUDA(cudaMemcpy(d, host_f64_.data(), n * sizeof(double), cudaMemcpyHostToDevice));
  }
  float* pinned(int64_t n) {
    if (static_cast<size_t>(n) > pinned_n_) {
      if (pinned_) GLAM_CHECK_CUDA(cudaFreeHost(pinned_));
      GLAM_CHECK_CUDA(cudaMallocHost(&pinned_, n * sizeof(float)));
      pinned_n_ = n;
      stats_.allocations++;
    }
    return pinned_;
  }
  void alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                 const std::vector<int64_t>& recv_rows, int64_t M) {
    int64_t ns = 0, nr = 0;
    for (int64_t r : send_rows) ns += r;
    for (int64_t r : recv_rows) nr += r;
    if (mesh_.data_size == 1 || aware_) {  // device pointers: MPI, or the mesh's copy on one data rank
      if (mesh_.data_size > 1) sync();
      mesh_.alltoallv_rows_data(send, send_rows, recv, recv_rows, M, device_copy);
      return;
    }
    sync();
    float* hs = pinned(ns * M + nr * M);
    float* hr = hs + ns * M;
    if (ns) GLAM_CHECK_CUDA(cudaMemcpy(hs, send, ns * M * sizeof(float), cudaMemcpyDeviceToHost));
    mesh_.alltoallv_rows_data(hs, send_rows, hr, recv_rows, M);
    if (nr) GLAM_CHECK_CUDA(cudaMemcpy(recv, hr, nr * M * sizeof(float), cudaMemcpyHostToDevice));
  }
  void regroup(float* dst, const float* src, const ExchangePlan& x, bool to_experts, int64_t M) {
    for_each_exchange_run(x, [&](int64_t received, int64_t grouped, int64_t n) {
      if (n == 0) return;
      const int64_t from = to_experts ? received : grouped, to = to_experts ? grouped : received;
      GLAM_CHECK_CUDA(cudaMemcpyAsync(dst + to * M, src + from * M, n * M * sizeof(float), cudaMemcpyDeviceToDevice,
                                 ctx_.stream()));
    });
  }
  // The routing tensors the model carved for this layer (model_buffers.cpp).
  static cuda::RoutingDevice routing_view(const Routing& r) {
    cuda::RoutingDevice d;
    d.gates = r.gates.f32();
    d.expert = r.expert.i32();
    d.g = r.g.f32();
    d.kept = r.kept.u8();
    d.slot = r.slot.i32();
    d.row = r.row.i32();
    d.first_frac = r.first_frac.f32();
    return d;
  }
  int64_t* pinned_summary(int64_t E) {
    const size_t bytes = static_cast<size_t>(cuda::routing_summary_bytes(E));
    if (bytes > summary_bytes_) {
      if (summary_) GLAM_CHECK_CUDA(cudaFreeHost(summary_));
      GLAM_CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&summary_), bytes));
      summary_bytes_ = bytes;
      stats_.allocations++;
    }
    return summary_;
  }

  // Bump allocation from one device block; reset() before each operation. When
  // an operation needs more, the block is replaced by a larger one and the old
  // one is freed at the next reset (cudaFree waits for the work that reads it),
  // so the scratch stops growing once the step's largest operation has run.
  class Scratch {
   public:
    explicit Scratch(CudaBackend& be) : be_(be) {}
    ~Scratch() {
      release_retired();
      if (base_) be_.deallocate(base_);
    }
    void reset() {
      used_ = 0;
      release_retired();
    }
    Tensor take(DType dtype, int64_t n) {
      const size_t bytes = (static_cast<size_t>(n) * dtype_size(dtype) + 255) / 256 * 256;
      if (used_ + bytes > capacity_) {
        if (base_) retired_.push_back(base_);
        capacity_ = std::max(2 * capacity_, used_ + bytes);
        base_ = be_.allocate(capacity_);
        used_ = 0;
      }
      Tensor t;
      t.ptr = static_cast<char*>(base_) + used_;
      t.dtype = dtype;
      t.device = Device::cuda;
      t.ndim = 1;
      t.shape[0] = n;
      used_ += bytes;
      return t;
    }
   private:
    void release_retired() {
      for (void* p : retired_) be_.deallocate(p);
      retired_.clear();
    }
    CudaBackend& be_;
    void* base_ = nullptr;
    size_t capacity_ = 0, used_ = 0;
    std::vector<void*> retired_;
  };

  ModelConfig cfg_;
  const Mesh& mesh_;
  bool aware_;
  bool flash_ = true;
  cuda::Context ctx_;
  Scratch scratch_;
  cuda::PhaseEvents phases_;
  std::unique_ptr<Arena> params_;
  Tensor w_all_, g_all_, w16_all_;  // [padded total] in table order
  std::vector<int64_t> offset_;      // [n_params + 1] element offsets
  std::vector<Tensor> w_, g_, w16_;  // views, one per parameter
  std::unique_ptr<cuda::DeviceAdafactor> adafactor_;  // the optimizer's statistics, once it ran or was loaded
  Tensor norm_partial_, norm_sums_;                    // f64 scratch of grad_norm
  std::vector<double> host_sums_;
  int64_t* summary_ = nullptr;  // pinned: the routing summary of the last route()
  size_t summary_bytes_ = 0;
  float* pinned_ = nullptr;
  size_t pinned_n_ = 0;
  std::vector<double> host_f64_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const Config& cfg, const Mesh& mesh) {
  GLAM_REQUIRE(cuda_device_count() > 0, "--device cuda: no GPU is visible to this rank (CUDA_VISIBLE_DEVICES, driver)");
  return std::make_unique<CudaBackend>(cfg, mesh);
}

}  // namespace glam
