// The CPU backend: every operation of backend.h on host memory with the kernels
// of layers.h (the readable reference) or layers_fast.h (the default), GEMM
// operands in fp32 or bf16 (gemm.h). The parameters are the table's own vectors.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "glam/model/adafactor.h"
#include "glam/model/backend.h"
#include "glam/base/check.h"
#include "glam/layers/cpu/layers_fast.h"

namespace glam {

namespace {

Tensor host_view(std::vector<float>& v, const std::vector<int64_t>& shape) {
  Tensor t;
  t.ptr = v.data();
  t.dtype = DType::f32;
  t.device = Device::cpu;
  t.ndim = static_cast<int>(std::min<size_t>(shape.size(), 4));
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); i++) {
    if (static_cast<int>(i) < 4) t.shape[i] = shape[i];
    else t.shape[3] *= shape[i];
    n *= shape[i];
  }
  if (shape.empty()) { t.ndim = 1; t.shape[0] = n; }
  return t;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(const Mesh& mesh, bool reference, cpu::Precision p)
      : mesh_(mesh), kern_(reference ? cpu::Kernels::reference() : cpu::Kernels::fast()), p_(p),
        reference_(reference) {}

  std::string name() const override {
    return std::string("cpu (") + (reference_ ? "reference" : "fast") + " kernels, " + cpu::precision_name(p_) +
           " GEMMs)";
  }
  Device device() const override { return Device::cpu; }
  DType gemm_dtype() const override { return DType::f32; }

  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!p) throw std::bad_alloc();
    stats_.allocations++;
    return p;
  }
  void deallocate(void* p) override { std::free(p); }

  // ---- parameters ------------------------------------------------------------------
  void bind_params(ParamTable& table) override {
    w_.clear();
    g_.clear();
    for (Param& p : table.params) {
      w_.push_back(p.w_on_shard ? Tensor{} : host_view(p.w, p.shape));  // gather_weights gives it a window
      g_.push_back(p.zero_sharded() ? Tensor{} : host_view(p.g, p.shape));  // open_grads gives it a buffer
    }
    pending_.assign(table.params.size(), nullptr);
    table_ = &table;
  }
  // The layers' windows alternate between two buffers, so the reduce-scatter of
  // layer l runs while the backward of layer l-1 fills the other; a buffer is
  // waited for only when it is needed again (or when the step's gradients are).
  void open_grads(const ParamTable& table, const std::vector<size_t>& ids, int window) override {
    if (window == 1) layer_slot_ = layer_slot_ == 1 ? 2 : 1;
    const int slot = window == 0 ? 0 : layer_slot_;
    for (GradWindow& w : windows_) progress(w.inflight);
    finish(windows_[slot]);
    GradWindow& win = windows_[slot];
    int64_t n = 0;
    for (size_t i : ids) n += table.params[i].zero_sharded() ? table.params[i].size() : 0;
    win.buf.assign(n, 0.0f);  // [sum of the sharded tensors' sizes] (reused: the capacity stays)
    n = 0;
    for (size_t i : ids) {
      const Param& p = table.params[i];
      if (!p.zero_sharded()) continue;
      Tensor t = host_view(win.buf, p.shape);
      t.ptr = win.buf.data() + n;
      g_[i] = t;
      n += p.size();
    }
  }
  void close_grads(ParamTable& table, const std::vector<size_t>& ids) override {
    GradWindow* win = nullptr;
    for (size_t i : ids) {
      Param& p = table.params[i];
      if (!p.zero_sharded()) continue;
      if (!win) win = &window_of(g_[i].f32());
      win->params.push_back(&p);
      win->inflight.push_back(std::make_unique<ScatterInFlight>());
      mesh_.start_reduce_scatter_sum_data(g_[i].f32(), zero_counts(p, mesh_.data_size), *win->inflight.back());
      g_[i] = Tensor{};
    }
  }
  // The layers' weight windows alternate too: layer l+1's gather (l-1's in the
  // backward) runs while layer l computes, and weight(i) waits for tensor i's.
  void gather_weights(const ParamTable& table, const std::vector<size_t>& ids, int slot) override {
    for (GradWindow& w : windows_) progress(w.inflight);
    WeightWindow& win = weight_windows_[slot];
    if (win.ids == ids) return;  // gathered since the last update
    release(win);
    for (size_t i : ids) {  // whole since params_to_host (a checkpoint): this rank's rows again
      Param& p = table_->params.at(i);
      if (p.zero_weights && !p.w_on_shard) keep_weight_rows(p);
    }
    int64_t n = 0;
    for (size_t i : ids) n += table.params[i].w_on_shard ? table.params[i].size() : 0;
    win.buf.resize(n);  // [sum of the sharded tensors' sizes] (the capacity stays)
    n = 0;
    for (size_t i : ids) {
      const Param& p = table.params[i];
      if (!p.w_on_shard) continue;
      float* whole = win.buf.data() + n;  // [shape], this rank's rows at their place
      std::copy(p.w.begin(), p.w.end(), whole + p.zero_row0 * p.row_size());
      win.inflight.push_back(std::make_unique<InFlight>());
      mesh_.start_allgather_data(whole, zero_counts(p, mesh_.data_size), *win.inflight.back());
      w_[i] = host_view(win.buf, p.shape);
      w_[i].ptr = whole;
      pending_[i] = win.inflight.back().get();
      n += p.size();
    }
    win.ids = ids;
  }
  Tensor weight(size_t i) override {
    if (pending_.at(i)) {
      pending_[i]->wait();
      pending_[i] = nullptr;
    }
    if (!w_.at(i).ptr) fatal("a weight kept as this rank's rows used outside every gathered window", __FILE__, __LINE__);
    return w_[i];
  }
  Tensor gemm_weight(size_t i) override { return weight(i); }
  Tensor grad(size_t i) override { return g_.at(i); }
  void refresh_gemm_weights() override {}
  void zero_grads() override { table_->zero_grad(); }
  // The table is the weights already; the optimizer's statistics go back to the
  // layout of an unsharded run (train.shard_state), which checkpoints store.
  // train.shard_weights: the weights are whole on the host side and this rank's
  // rows on the device side.
  void params_to_host(ParamTable& table, Adafactor* opt) override {
    release_weight_windows();
    for (size_t i = 0; i < table.params.size(); i++) {
      if (!table.params[i].w_on_shard) continue;
      gather_weight_rows(table.params[i], mesh_);
      w_[i] = host_view(table.params[i].w, table.params[i].shape);
    }
    if (opt) opt->gather_state(table, mesh_);
  }
  void params_to_device(const ParamTable& table, const Adafactor*) override {
    release_weight_windows();
    for (size_t i = 0; i < table.params.size(); i++) {
      Param& p = table_->params.at(i);
      GLAM_ASSERT(&p == &table.params[i]);
      keep_weight_rows(p);
      if (p.w_on_shard) w_[i] = Tensor{};
    }
  }
  void grads_to_host(ParamTable&) override {}
  void reduce_gradients(const ParamTable& table, const ExpertPlacement& place) override {
    for (GradWindow& w : windows_) finish(w);
    for (const Param& p : table.params) {
      float* g = const_cast<float*>(p.g.data());
      if (p.zero_sharded()) continue;  // close_grads reduce-scattered it
      if (p.data_axis < 0) mesh_.allreduce_sum_data(g, p.size());
      else if (p.data_replicas > 1) mesh_.allreduce_sum_replicas(g, p.size(), place);
    }
  }
  double grad_norm(const ParamTable& table) override { return global_grad_norm(table, mesh_); }
  void optimizer_step(ParamTable& table, Adafactor& opt, double lr, int64_t t) override {
    release_weight_windows();
    opt.step(table, lr, t, mesh_);
    for (size_t i = 0; i < table.params.size(); i++)
      if (table.params[i].w_on_shard) w_[i] = Tensor{};  // train.shard_weights: gathered again when used
  }

  // ---- memory -------------------------------------------------------------------------
  void upload(Tensor dst, const void* host) override { std::memcpy(dst.ptr, host, dst.bytes()); }
  void download(void* host, const Tensor& src) override { std::memcpy(host, src.ptr, src.bytes()); }
  void copy(Tensor dst, const Tensor& src) override {
    GLAM_ASSERT(dst.dtype == src.dtype && dst.numel() == src.numel());
    std::memcpy(dst.ptr, src.ptr, src.bytes());
  }
  void zero(Tensor t) override { std::memset(t.ptr, 0, t.bytes()); }
  void add_into(Tensor y, const Tensor& x) override {
    GLAM_ASSERT(y.numel() == x.numel());
    float* py = y.f32();
    const float* px = x.f32();
    for (int64_t i = 0, n = y.numel(); i < n; i++) py[i] += px[i];
  }
  void sync() override {}

  // ---- collectives ----------------------------------------------------------------------
  void allreduce_sum_model(Tensor x) override {
    if (bf16_exchanges_) mesh_.allreduce_sum_model_bf16(x.f32(), x.numel());
    else mesh_.allreduce_sum_model(x.f32(), x.numel());
  }
  void send_to_experts(Tensor expert_rows, const Tensor& dispatched, const ExchangePlan& x, int64_t M) override {
    glam::send_to_experts(expert_rows.f32(), dispatched.f32(), scratch(x.n_recv() * M), x, mesh_, M,
                          bf16_exchanges_);
  }
  void return_from_experts(Tensor dispatched, const Tensor& expert_rows, const ExchangePlan& x,
                           int64_t M) override {
    glam::return_from_experts(dispatched.f32(), expert_rows.f32(), scratch(x.n_recv() * M), x, mesh_, M,
                              bf16_exchanges_);
  }
  // The chunks stage in packed_ [n_send, M] and scratch_ [n_recv, M], sized when the
  // first chunk starts and left alone until the last one is back.
  void start_send_chunk(ChunkedExchange& cx, int64_t c, const Tensor& dispatched, int64_t M) override {
    if (c == 0) {
      scratch(cx.expert_first[cx.k] * M);
      if (static_cast<int64_t>(packed_.size()) < cx.packed_first[cx.k] * M) packed_.resize(cx.packed_first[cx.k] * M);
    }
    glam::start_send_chunk(cx, c, dispatched.f32(), packed_.data(), scratch_.data(), mesh_, M, bf16_exchanges_);
  }
  void finish_send_chunk(ChunkedExchange& cx, int64_t c, Tensor expert_rows, int64_t M) override {
    glam::finish_send_chunk(cx, c, expert_rows.f32(), scratch_.data(), M);
  }
  void start_return_chunk(ChunkedExchange& cx, int64_t c, const Tensor& expert_rows, int64_t M) override {
    glam::start_return_chunk(cx, c, expert_rows.f32(), packed_.data(), scratch_.data(), mesh_, M, bf16_exchanges_);
  }
  void finish_return_chunk(ChunkedExchange& cx, int64_t c, Tensor dispatched, int64_t M) override {
    glam::finish_return_chunk(cx, c, dispatched.f32(), packed_.data(), M);
  }
  void progress_chunks(ChunkedExchange& cx) override { glam::progress_chunks(cx); }

  // ---- layers ---------------------------------------------------------------------------
  void embedding_forward(Tensor out, const Tensor& ids, const Tensor& emb, int64_t T, int64_t M, int64_t row0,
                         int64_t rows) override {
    cpu::embedding_forward(out.f32(), ids.i32(), emb.f32(), T, M, row0, rows);
  }
  void embedding_backward(Tensor demb, const Tensor& dout, const Tensor& ids, int64_t T, int64_t M, int64_t row0,
                          int64_t rows) override {
    cpu::embedding_backward(demb.f32(), dout.f32(), ids.i32(), T, M, row0, rows);
  }
  void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& g, int64_t T, int64_t M,
                       Tensor out_f32) override {
    cpu::rmsnorm_forward(out.f32(), rstd.f32(), x.f32(), g.f32(), T, M);
    if (!out_f32.empty() && out_f32.ptr != out.ptr) copy(out_f32, out);
  }
  void rmsnorm_backward(Tensor dx, Tensor dg, const Tensor& dout, const Tensor& x, const Tensor& g,
                        const Tensor& rstd, int64_t T, int64_t M) override {
    cpu::rmsnorm_backward(dx.f32(), dg.f32(), dout.f32(), x.f32(), g.f32(), rstd.f32(), T, M);
  }
  void matmul_forward(Tensor out, const Tensor& in, const Tensor& w, int64_t T, int64_t K, int64_t N) override {
    cpu::matmul_forward(out.f32(), in.f32(), w.f32(), T, K, N, p_);
  }
  void matmul_backward(Tensor din, Tensor dw, const Tensor& dout, const Tensor& in, const Tensor& w, int64_t T,
                       int64_t K, int64_t N) override {
    cpu::matmul_backward(ptr(din), ptr(dw), dout.f32(), in.f32(), w.f32(), T, K, N, p_);
  }
  void matmul_fp32_forward(Tensor out, const Tensor& in, const Tensor& w, int64_t T, int64_t K,
                           int64_t N) override {
    cpu::matmul_forward(out.f32(), in.f32(), w.f32(), T, K, N, cpu::Precision::fp32);
  }
  void matmul_fp32_backward(Tensor din, Tensor dw, const Tensor& dout, const Tensor& in, const Tensor& w, int64_t T,
                            int64_t K, int64_t N) override {
    cpu::matmul_backward(ptr(din), ptr(dw), dout.f32(), in.f32(), w.f32(), T, K, N, cpu::Precision::fp32);
  }
  void logits_forward(Tensor logits, const Tensor& h, const Tensor& emb, int64_t T, int64_t M, int64_t Vl,
                      float scale) override {
    cpu::logits_forward(logits.f32(), h.f32(), emb.f32(), T, M, Vl, scale, p_);
  }
  void logits_backward(Tensor dh, Tensor demb, const Tensor& dlogits, const Tensor& h, const Tensor& emb, int64_t T,
                       int64_t M, int64_t Vl, float scale) override {
    cpu::logits_backward(dh.f32(), demb.f32(), dlogits.f32(), h.f32(), emb.f32(), T, M, Vl, scale, p_);
  }
  std::vector<int64_t> attention_state_shape(int64_t B, int64_t S, int64_t nh) const override {
    return {B, nh, S, 2};  // (row max, 1/denominator) per query
  }
  void attention_forward(Tensor out, Tensor state, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& rb, const Tensor& segments, int64_t B, int64_t S, int64_t nh,
                         int64_t dh) override {
    kern_.attention_forward(out.f32(), state.f32(), q.f32(), k.f32(), v.f32(), rb.f32(), segments.i32(), B, S, nh,
                            dh);
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor drb, const Tensor& dout, const Tensor& state,
                          const Tensor&, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rb,
                          const Tensor& segments, int64_t B, int64_t S, int64_t nh, int64_t dh) override {
    kern_.attention_backward(dq.f32(), dk.f32(), dv.f32(), drb.f32(), dout.f32(), state.f32(), q.f32(), k.f32(),
                             v.f32(), rb.f32(), segments.i32(), B, S, nh, dh);
  }
  void attention_decode(Tensor out, const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& rb,
                        int64_t B, int64_t n, int64_t len, int64_t cap, int64_t nh, int64_t dh) override {
    cpu::attention_decode(out.f32(), q.f32(), kc.f32(), vc.f32(), rb.f32(), B, n, len, cap, nh, dh);
  }
  void kv_append(Tensor cache, const Tensor& x, int64_t B, int64_t n, int64_t pos0, int64_t cap,
                 int64_t A) override {
    for (int64_t b = 0; b < B; b++)
      std::memcpy(cache.f32() + (b * cap + pos0) * A, x.f32() + b * n * A, sizeof(float) * n * A);
  }
  void geglu_forward(Tensor h, const Tensor& a0, const Tensor& a1, int64_t n) override {
    kern_.geglu_forward(h.f32(), a0.f32(), a1.f32(), n);
  }
  void geglu_backward(Tensor da0, Tensor da1, const Tensor& dh, const Tensor& a0, const Tensor& a1,
                      int64_t n) override {
    kern_.geglu_backward(da0.f32(), da1.f32(), dh.f32(), a0.f32(), a1.f32(), n);
  }
  cpu::LossSums softmax_xent_forward(Tensor lse, const Tensor& logits, const Tensor& targets, int64_t T, int64_t Vl,
                                     int64_t v0) override {
    return kern_.softmax_xent_forward(lse.f32(), logits.f32(), targets.i32(), T, Vl, v0, mesh_);
  }
  void softmax_xent_backward(Tensor dlogits, const Tensor& logits, const Tensor& lse, const Tensor& targets,
                             int64_t T, int64_t Vl, int64_t v0, float ce_scale, float z_scale) override {
    kern_.softmax_xent_backward(dlogits.f32(), logits.f32(), lse.f32(), targets.i32(), T, Vl, v0, ce_scale,
                                z_scale);
  }

  // ---- MoE ---------------------------------------------------------------------------------
  void route(Routing& r, const Tensor& logits, int64_t T, const cpu::RouterOptions& opt,
             const Routing* frozen) override {
    cpu::router_forward(r.plan, logits.f32(), T, opt, frozen ? &frozen->plan : nullptr);
  }
  void router_backward(Tensor dlogits, const Tensor& dweight, double aux_grad, const Routing& r) override {
    cpu::router_backward(dlogits.f32(), dweight.f32(), aux_grad, r.plan);
  }
  void dispatch_forward(Tensor expert_in, const Tensor& x, const Routing& r, int64_t M) override {
    cpu::dispatch_forward(expert_in.f32(), x.f32(), r.plan, M);
  }
  void dispatch_backward(Tensor dx, const Tensor& dexpert_in, const Routing& r, int64_t M) override {
    cpu::dispatch_backward(dx.f32(), dexpert_in.f32(), r.plan, M);
  }
  void combine_forward(Tensor out, const Tensor& expert_out, const Routing& r, int64_t M) override {
    cpu::combine_forward(out.f32(), expert_out.f32(), r.plan, M);
  }
  void combine_backward(Tensor dexpert_out, Tensor dweight, const Tensor& dout, const Tensor& expert_out,
                        const Routing& r, int64_t M) override {
    cpu::combine_backward(dexpert_out.f32(), dweight.f32(), dout.f32(), expert_out.f32(), r.plan, M);
  }
  void experts_forward(Tensor y, Tensor pre, Tensor h, const Tensor& x, const Tensor& wi, const Tensor& wo,
                       const std::vector<int64_t>& offsets, int64_t M, int64_t H, cpu::Act act) override {
    kern_.experts_forward(y.f32(), pre.f32(), h.f32(), x.f32(), wi.f32(), wo.f32(), offsets, M, H, act, p_);
  }
  void experts_backward(Tensor dx, Tensor dwi, Tensor dwo, Tensor dh_scratch, const Tensor& dy, const Tensor& x,
                        const Tensor& pre, const Tensor& h, const Tensor& wi, const Tensor& wo,
                        const std::vector<int64_t>& offsets, int64_t M, int64_t H, cpu::Act act) override {
    kern_.experts_backward(dx.f32(), dwi.f32(), dwo.f32(), dh_scratch.f32(), dy.f32(), x.f32(), pre.f32(), h.f32(),
                           wi.f32(), wo.f32(), offsets, M, H, act, p_);
  }

  // ---- phases --------------------------------------------------------------------------------
  void phase_begin(const char* name) override { open_.push_back({name, Clock::now()}); }
  void phase_end(const char* name) override {
    GLAM_ASSERT(!open_.empty() && open_.back().first == name);
    done_.add(name, std::chrono::duration<double>(Clock::now() - open_.back().second).count());
    open_.pop_back();
  }
  void collect_phases(PhaseTimers& timers, bool) override {
    for (const auto& [name, s] : done_.phases()) timers.add(name, s);
    done_ = PhaseTimers{};
  }

 private:
  using Clock = std::chrono::steady_clock;
  static float* ptr(const Tensor& t) { return t.ptr ? t.f32() : nullptr; }
  float* scratch(int64_t n) {
    if (static_cast<int64_t>(scratch_.size()) < n) scratch_.resize(n);
    return scratch_.data();
  }

  // open_grads' buffers: one for a layer, one for the embedding and final norm
  // open_grads' buffers: [0] the embedding and final norm, [1] and [2] the layers in turn
  struct GradWindow {
    std::vector<float> buf;
    std::vector<Param*> params;                              // closed, their reduce-scatter in flight
    std::vector<std::unique_ptr<ScatterInFlight>> inflight;  // one per tensor of params
  };
  GradWindow& window_of(const float* g) {
    for (GradWindow& w : windows_)
      if (!w.buf.empty() && g >= w.buf.data() && g < w.buf.data() + w.buf.size()) return w;
    fatal("a sharded gradient outside every open window", __FILE__, __LINE__);
  }
  static void progress(std::vector<std::unique_ptr<InFlight>>& inflight) {
    for (auto& x : inflight) if (!x->done()) break;  // each test lets MPI advance the rest
  }
  // Waits for the window's reduce-scatters and adds this rank's rows to Param::g.
  void finish(GradWindow& w) {
    for (size_t k = 0; k < w.params.size(); k++) {
      w.inflight[k]->wait();
      const std::vector<float>& mine = w.inflight[k]->part();
      std::vector<float>& g = w.params[k]->g;
      for (size_t e = 0; e < g.size(); e++) g[e] += mine[e];
    }
    w.params.clear();
    w.inflight.clear();
  }
  GradWindow windows_[3];
  // gather_weights' buffers: [0] the embedding and final norm, [1] and [2] the layers in turn
  struct WeightWindow {
    std::vector<float> buf;
    std::vector<size_t> ids;                                 // the tensors it holds
    std::vector<std::unique_ptr<InFlight>> inflight;         // their all-gathers
  };
  // Waits for the window's all-gathers (MPI writes into buf) and forgets its tensors.
  void release(WeightWindow& win) {
    for (auto& x : win.inflight) x->wait();
    for (size_t i : win.ids) {
      pending_[i] = nullptr;
      if (table_->params[i].w_on_shard) w_[i] = Tensor{};
    }
    win.inflight.clear();
    win.ids.clear();
  }
  void release_weight_windows() {
    for (WeightWindow& w : weight_windows_) release(w);
  }
  WeightWindow weight_windows_[3];
  std::vector<InFlight*> pending_;  // [params] tensor i's all-gather while in flight
  int layer_slot_ = 1;
  const Mesh& mesh_;
  cpu::Kernels kern_;
  cpu::Precision p_;
  bool reference_;
  ParamTable* table_ = nullptr;
  std::vector<Tensor> w_, g_;
  std::vector<float> scratch_;  // [n_recv, M] the exchange's staging rows
  std::vector<float> packed_;   // [n_send, M] dispatched rows of the chunks in flight (train.exchange_chunks)
  std::vector<std::pair<std::string, Clock::time_point>> open_;
  PhaseTimers done_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const Mesh& mesh, bool reference_kernels, cpu::Precision p) {
  return std::make_unique<CpuBackend>(mesh, reference_kernels, p);
}

}  // namespace glam
