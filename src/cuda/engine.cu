// GLaM forward and backward on the GPU: src/model.cpp's layer order and mesh
// reductions, with glam::cuda layers. T = B*S tokens of this rank, M = d_model,
// A = local heads * d_head, H = local hidden, Vl = local vocabulary.
//
// Still on the host (staged, correct, to be moved): the expert exchange
// (send_to_experts / return_from_experts take host rows), the router's
// bookkeeping and backward, the gradient reductions over the data axis and the
// optimizer. Everything else runs on the device.
#include "glam/cuda/engine.h"

#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "glam/check.h"
#include "glam/cuda/adafactor.h"
#include "glam/cuda/layers.h"
#include "glam/exchange.h"
#include "glam/model.h"

namespace glam::cuda {

bool mpi_is_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

namespace {

struct DeviceParam {
  Buffer<float> w, g;   // fp32 master copy, gradient
  Buffer<bf16> w16;     // bf16 copy for GEMMs
};

// Device activations of one layer (cf. LayerActs in model.h).
struct Acts {
  Buffer<float> x, rstd1, q, k, v, probs, att_lse, att, x_mid, rstd2, xn2_32;  // probs: naive, att_lse: flash
  Buffer<bf16> xn1, att16, xn2;
  Buffer<float> a0, a1;  // dense
  Buffer<bf16> h16;
  Buffer<float> router_logits, pre, xout, eout;  // MoE
  Buffer<bf16> ein16, xin16, eh16;
  DeviceRouting route;
  cpu::RoutingPlan plan;
  ExchangePlan xplan;
};

template <typename T>
void ensure(Buffer<T>& b, int64_t n) {
  if (static_cast<int64_t>(b.size()) != n) b.resize(n);
}

template <typename T>
void zero(const Context& ctx, Buffer<T>& b, int64_t n) {
  ensure(b, n);
  if (n) check(cudaMemsetAsync(b.data(), 0, n * sizeof(T), ctx.stream()), "cudaMemsetAsync");
}

// Page-locked host memory for staging collectives when MPI cannot take device
// pointers; grows on demand, one per purpose.
class Pinned {
 public:
  ~Pinned() { if (ptr_) cudaFreeHost(ptr_); }
  float* get(size_t n) {
    if (n > n_) {
      if (ptr_) cudaFreeHost(ptr_);
      check(cudaMallocHost(&ptr_, n * sizeof(float)), "cudaMallocHost");
      n_ = n;
    }
    return ptr_;
  }
 private:
  float* ptr_ = nullptr;
  size_t n_ = 0;
};

}  // namespace

struct Engine::Impl {
  Impl(const Config& cfg, const Mesh& mesh, ParamTable& params)
      : cfg(cfg.model), mesh(mesh), seed(cfg.train.seed), params(params), aware(mpi_is_cuda_aware()) {
    const char* kind = std::getenv("GLAM_CUDA_ATTENTION");  // "naive" forces the reference kernel
    flash = flash_attention_supports(this->cfg.d_head) && !(kind && std::string(kind) == "naive");
    nh = this->cfg.n_heads / mesh.model_size;
    H = this->cfg.d_ff / mesh.model_size;
    if (this->cfg.n_experts > 0) place = mesh.place_experts(this->cfg.n_experts);
    V = this->cfg.vocab_size / mesh.model_size;
    v0 = V * mesh.model_rank;
    acts.resize(this->cfg.n_layers);
  }

  ModelConfig cfg;
  const Mesh& mesh;
  uint64_t seed;
  ParamTable& params;
  bool aware;
  bool flash = true;  // fused attention (flash_attention.cu) unless d_head is unsupported
  Context ctx;
  std::map<std::string, DeviceParam> dev;
  ExpertPlacement place;
  int64_t nh = 0, H = 0, V = 0, v0 = 0, B = 0, S = 0, T = 0, step = 0;
  const Batch* batch = nullptr;
  Buffer<int32_t> ids, targets, segments;
  std::vector<Acts> acts;
  Buffer<float> x_final, rstdf, logits, lse;
  Buffer<bf16> xnf16;
  LossParts parts;

  std::string pname(int64_t l, const char* what) const {
    char buf[64];
    std::snprintf(buf, sizeof buf, "layer_%02lld/%s", static_cast<long long>(l), what);
    return buf;
  }
  DeviceParam& p(const std::string& name) { return dev.at(name); }
  cpu::Act act() const { return cfg.expert_act == "gelu" ? cpu::Act::gelu : cpu::Act::relu; }

  Pinned pinned_a, pinned_b;
  std::vector<DeviceAdafactorSlot> slots;  // the optimizer's statistics, once on the device
  bool weights_on_device = false;

  // An in-place reduction `op` of n floats at d: on the device pointer when MPI
  // is CUDA-aware, else through pinned host memory.
  template <typename Op>
  void reduce(float* d, int64_t n, Op op) {
    if (n == 0) return;
    ctx.sync();
    if (aware) { op(d); return; }
    float* h = pinned_a.get(n);
    check(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost), "stage");
    op(h);
    check(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice), "stage");
  }

  // Sum over the model axis (the tensor-parallel partial sums).
  void reduce_model(float* d, int64_t n) {
    if (mesh.model_size > 1) reduce(d, n, [&](float* x) { mesh.allreduce_sum_model(x, n); });
  }

  // The fp32 master weights live on the device from the first forward (or
  // to_device) on; each forward refreshes their bf16 copies there.
  void refresh_weights() {
    if (!weights_on_device) to_device(nullptr);
    for (const Param& q : params.params) {
      DeviceParam& d = dev[q.name];
      ensure(d.w16, q.size());
      to_bf16(ctx, d.w16.data(), d.w.data(), q.size());
    }
  }

  void to_device(const Adafactor* opt) {
    for (const Param& q : params.params) dev[q.name].w.upload(q.w);
    weights_on_device = true;
    if (opt) {
      slots.clear();
      for (const AdafactorSlot& s : opt->slots()) slots.push_back(make_slot(s));
    }
  }

  void to_host(Adafactor* opt) {
    ctx.sync();
    for (Param& q : params.params) {
      DeviceParam& d = dev[q.name];
      if (weights_on_device) q.w = d.w.download();
      if (d.g.size() == static_cast<size_t>(q.size())) q.g = d.g.download();
    }
    if (opt && !slots.empty())
      for (size_t i = 0; i < slots.size(); i++) {
        AdafactorSlot& h = opt->slots()[i];
        if (slots[i].factored) { h.vr = slots[i].vr; h.vc = slots[i].vc; }
        else h.v = slots[i].v.download();
      }
  }

  // Data parallelism as Model::reduce_gradients, on the device gradients.
  void reduce_gradients() {
    for (const Param& q : params.params) {
      float* g = dev.at(q.name).g.data();
      if (q.data_axis < 0) reduce(g, q.size(), [&](float* x) { mesh.allreduce_sum_data(x, q.size()); });
      else if (q.data_replicas > 1)
        reduce(g, q.size(), [&](float* x) { mesh.allreduce_sum(x, q.size(), place.replica_comm); });
    }
  }

  double grad_norm() {
    double sum = 0.0;
    for (const Param& q : params.params) {
      double s = sum_squares(ctx, dev.at(q.name).g.data(), q.size());
      sum_over_shards(q, mesh, &s, 1);
      sum += s;
    }
    return std::sqrt(sum);
  }

  void optimizer_step(Adafactor& opt, double lr, int64_t t) {
    if (slots.empty())
      for (const AdafactorSlot& h : opt.slots()) slots.push_back(make_slot(h));
    const double rho = 1.0 - std::pow(static_cast<double>(t + 1), -opt.options().decay_pow);
    for (size_t i = 0; i < params.params.size(); i++) {
      const Param& q = params.params[i];
      DeviceParam& d = dev.at(q.name);
      adafactor_update(ctx, d.w.data(), d.g.data(), slots[i], q, rho, lr, opt.options(), mesh);
    }
  }

  // Rows [rows, M] in router order -> [n_recv, M] for this rank's experts, and
  // back: MPI_Alltoallv over the data axis on device buffers (CUDA-aware MPI) or
  // pinned host copies, then the regrouping as device-to-device copies.
  void alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                 const std::vector<int64_t>& recv_rows) {
    const int64_t M = cfg.d_model;
    int64_t ns = 0, nr = 0;
    for (int64_t r : send_rows) ns += r;
    for (int64_t r : recv_rows) nr += r;
    ctx.sync();
    if (aware) { mesh.alltoallv_rows_data(send, send_rows, recv, recv_rows, M); return; }
    float* hs = pinned_a.get(ns * M);
    float* hr = pinned_b.get(nr * M);
    if (ns) check(cudaMemcpy(hs, send, ns * M * sizeof(float), cudaMemcpyDeviceToHost), "stage");
    mesh.alltoallv_rows_data(hs, send_rows, hr, recv_rows, M);
    if (nr) check(cudaMemcpy(recv, hr, nr * M * sizeof(float), cudaMemcpyHostToDevice), "stage");
  }

  void regroup(float* dst, const float* src, const ExchangePlan& x, bool to_experts) {
    const int64_t M = cfg.d_model;
    for_each_exchange_run(x, [&](int64_t received, int64_t grouped, int64_t n) {
      if (n == 0) return;
      const int64_t from = to_experts ? received : grouped, to = to_experts ? grouped : received;
      check(cudaMemcpyAsync(dst + to * M, src + from * M, n * M * sizeof(float), cudaMemcpyDeviceToDevice,
                            ctx.stream()), "regroup");
    });
  }

  // ---- forward ----------------------------------------------------------------

  LossParts forward(const Batch& b, bool no_drop) {
    const int64_t M = cfg.d_model, L = cfg.n_layers;
    batch = &b;
    B = b.rows; S = b.seq_len; T = B * S;
    parts = LossParts{};
    for (int32_t id : b.ids)
      GLAM_REQUIRE(id >= 0 && id < cfg.vocab_size, "token id ", id, " outside the vocabulary [0, ",
                   cfg.vocab_size, ")");
    refresh_weights();
    ids.upload(b.ids); targets.upload(b.targets); segments.upload(b.segments);

    ensure(acts[0].x, T * M);
    embedding_forward(ctx, acts[0].x.data(), ids.data(), p("embedding").w.data(), T, M, v0, V);
    reduce_model(acts[0].x.data(), T * M);
    Buffer<float> ffn_out(T * M);
    for (int64_t l = 0; l < L; l++) {
      Acts& a = acts[l];
      attention_forward(l);
      ensure(a.xn2, T * M); ensure(a.rstd2, T); ensure(a.xn2_32, T * M);
      rmsnorm_forward(ctx, a.xn2.data(), a.rstd2.data(), a.x_mid.data(), p(pname(l, "ffn/norm_scale")).w.data(),
                      T, M, a.xn2_32.data());
      if (cfg.is_moe_layer(l)) moe_forward(l, ffn_out, no_drop);
      else dense_forward(l, ffn_out);
      Buffer<float>& next = l + 1 < L ? acts[l + 1].x : x_final;
      ensure(next, T * M);
      check(cudaMemcpyAsync(next.data(), a.x_mid.data(), T * M * sizeof(float), cudaMemcpyDeviceToDevice,
                            ctx.stream()), "residual");
      add_into(ctx, next.data(), ffn_out.data(), T * M);
    }
    ensure(xnf16, T * M); ensure(rstdf, T); ensure(logits, T * V); ensure(lse, T);
    rmsnorm_forward(ctx, xnf16.data(), rstdf.data(), x_final.data(), p("final_norm_scale").w.data(), T, M);
    logits_forward(ctx, logits.data(), xnf16.data(), p("embedding").w16.data(), T, M, V,
                   1.0f / std::sqrt(static_cast<float>(M)));
    const cpu::LossSums sums = softmax_xent_forward(ctx, lse.data(), logits.data(), targets.data(), T, V, v0, mesh);
    add_output_loss(parts, sums, cfg, mesh);
    return parts;
  }

  void attention_forward(int64_t l) {
    const int64_t M = cfg.d_model, dh = cfg.d_head, A = nh * dh;
    Acts& a = acts[l];
    ensure(a.xn1, T * M); ensure(a.rstd1, T);
    rmsnorm_forward(ctx, a.xn1.data(), a.rstd1.data(), a.x.data(), p(pname(l, "attn/norm_scale")).w.data(), T, M);
    ensure(a.q, T * A); ensure(a.k, T * A); ensure(a.v, T * A);
    matmul_forward(ctx, a.q.data(), a.xn1.data(), p(pname(l, "attn/wq")).w16.data(), T, M, A);
    matmul_forward(ctx, a.k.data(), a.xn1.data(), p(pname(l, "attn/wk")).w16.data(), T, M, A);
    matmul_forward(ctx, a.v.data(), a.xn1.data(), p(pname(l, "attn/wv")).w16.data(), T, M, A);
    ensure(a.att, T * A); ensure(a.att16, T * A);
    if (flash) {
      ensure(a.att_lse, B * nh * S);
      attention_flash_forward(ctx, a.att.data(), a.att_lse.data(), a.q.data(), a.k.data(), a.v.data(),
                              p(pname(l, "attn/rel_bias")).w.data(), segments.data(), B, S, nh, dh);
    } else {
      ensure(a.probs, B * nh * S * S);
      cuda::attention_forward(ctx, a.att.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(),
                              p(pname(l, "attn/rel_bias")).w.data(), segments.data(), B, S, nh, dh);
    }
    to_bf16(ctx, a.att16.data(), a.att.data(), T * A);
    ensure(a.x_mid, T * M);
    matmul_forward(ctx, a.x_mid.data(), a.att16.data(), p(pname(l, "attn/wo")).w16.data(), T, A, M);
    reduce_model(a.x_mid.data(), T * M);
    add_into(ctx, a.x_mid.data(), a.x.data(), T * M);
  }

  void dense_forward(int64_t l, Buffer<float>& out) {
    const int64_t M = cfg.d_model;
    Acts& a = acts[l];
    ensure(a.a0, T * H); ensure(a.a1, T * H); ensure(a.h16, T * H);
    matmul_forward(ctx, a.a0.data(), a.xn2.data(), p(pname(l, "ffn/wi0")).w16.data(), T, M, H);
    matmul_forward(ctx, a.a1.data(), a.xn2.data(), p(pname(l, "ffn/wi1")).w16.data(), T, M, H);
    geglu_forward(ctx, a.h16.data(), a.a0.data(), a.a1.data(), T * H);
    matmul_forward(ctx, out.data(), a.h16.data(), p(pname(l, "ffn/wo")).w16.data(), T, H, M);
    reduce_model(out.data(), T * M);
  }

  void exchange_to_experts(Buffer<float>& dst, const float* src, int64_t rows, const ExchangePlan& x) {
    const int64_t M = cfg.d_model;
    Buffer<float> received(x.n_recv() * M);
    alltoallv(src, x.send_rows, received.data(), x.recv_rows);
    ensure(dst, x.n_recv() * M);
    regroup(dst.data(), received.data(), x, true);
    ctx.sync();
  }

  void exchange_from_experts(Buffer<float>& dst, const float* src, int64_t rows, const ExchangePlan& x) {
    const int64_t M = cfg.d_model;
    Buffer<float> outgoing(x.n_recv() * M);
    regroup(outgoing.data(), src, x, false);
    ensure(dst, rows * M);
    alltoallv(outgoing.data(), x.recv_rows, dst.data(), x.send_rows);
  }

  void moe_forward(int64_t l, Buffer<float>& out, bool no_drop) {
    const int64_t M = cfg.d_model, E = cfg.n_experts;
    Acts& a = acts[l];
    ensure(a.router_logits, T * E);
    gemm_f32(ctx, false, false, T, E, M, 1.0f, a.xn2_32.data(), M, p(pname(l, "moe/router")).w.data(), E,
             0.0f, a.router_logits.data(), E);
    const cpu::RouterOptions opt = router_options(cfg, mesh, seed, step, l, T, no_drop);
    router_forward(ctx, a.plan, a.route, a.router_logits.data(), T, opt);

    const int64_t rows = a.plan.expert_offset[E];
    ensure(a.ein16, rows * M);
    dispatch_forward(ctx, a.ein16.data(), a.xn2.data(), a.route.row.data(), T, M);
    a.xplan = plan_exchange(a.plan, place, mesh);
    Buffer<float> ein(rows * M), xin;
    to_f32(ctx, ein.data(), a.ein16.data(), rows * M);
    ctx.sync();
    exchange_to_experts(xin, ein.data(), rows, a.xplan);
    const int64_t n = a.xplan.n_recv();
    ensure(a.xin16, n * M); ensure(a.pre, n * H); ensure(a.eh16, n * H); ensure(a.xout, n * M);
    to_bf16(ctx, a.xin16.data(), xin.data(), n * M);
    const std::vector<int64_t>& off = a.xplan.local_offsets;
    const bf16* wi = p(pname(l, "moe/wi")).w16.data();
    const bf16* wo = p(pname(l, "moe/wo")).w16.data();
    for (size_t e = 0; e + 1 < off.size(); e++)
      matmul_forward(ctx, a.pre.data() + off[e] * H, a.xin16.data() + off[e] * M, wi + e * M * H,
                     off[e + 1] - off[e], M, H);
    act_forward(ctx, a.eh16.data(), a.pre.data(), n * H, act());
    for (size_t e = 0; e + 1 < off.size(); e++)
      matmul_forward(ctx, a.xout.data() + off[e] * M, a.eh16.data() + off[e] * H, wo + e * H * M,
                     off[e + 1] - off[e], H, M);
    reduce_model(a.xout.data(), n * M);
    ctx.sync();
    exchange_from_experts(a.eout, a.xout.data(), rows, a.xplan);
    combine_forward(ctx, out.data(), a.eout.data(), a.route.row.data(), a.route.g.data(), a.route.kept.data(),
                    T, M);
    add_routing_statistics(parts, a.plan, T, mesh);
  }

  // ---- backward ---------------------------------------------------------------

  void backward() {
    const int64_t M = cfg.d_model, L = cfg.n_layers;
    for (const Param& q : params.params) zero(ctx, dev[q.name].g, q.size());
    Buffer<float> dx, dxn, dxnf, dlogits;
    zero(ctx, dx, T * M);
    {
      const double n = std::max<int64_t>(1, parts.n_targets);
      ensure(dlogits, T * V);
      softmax_xent_backward(ctx, dlogits.data(), logits.data(), lse.data(), targets.data(), T, V, v0,
                            static_cast<float>(1.0 / n), static_cast<float>(cfg.z_loss_weight / n));
      Buffer<bf16> dlogits16(T * V);
      to_bf16(ctx, dlogits16.data(), dlogits.data(), T * V);
      zero(ctx, dxnf, T * M);
      DeviceParam& emb = p("embedding");
      logits_backward(ctx, dxnf.data(), emb.g.data(), dlogits16.data(), xnf16.data(), emb.w16.data(), T, M, V,
                      1.0f / std::sqrt(static_cast<float>(M)));
      reduce_model(dxnf.data(), T * M);
      DeviceParam& gf = p("final_norm_scale");
      rmsnorm_backward(ctx, dx.data(), gf.g.data(), dxnf.data(), x_final.data(), gf.w.data(), rstdf.data(), T, M);
    }
    for (int64_t l = L - 1; l >= 0; l--) {
      Acts& a = acts[l];
      zero(ctx, dxn, T * M);
      if (cfg.is_moe_layer(l)) moe_backward(l, dx, dxn);
      else dense_backward(l, dx, dxn);
      DeviceParam& g2 = p(pname(l, "ffn/norm_scale"));
      rmsnorm_backward(ctx, dx.data(), g2.g.data(), dxn.data(), a.x_mid.data(), g2.w.data(), a.rstd2.data(), T, M);
      attention_backward(l, dx);
    }
    embedding_backward(ctx, p("embedding").g.data(), dx.data(), ids.data(), T, M, v0, V);
    reduce_gradients();
    ctx.sync();
  }

  Buffer<bf16> half(const float* x, int64_t n) {
    Buffer<bf16> h(n);
    to_bf16(ctx, h.data(), x, n);
    return h;
  }

  // dx holds d x_mid on entry and d x on exit.
  void attention_backward(int64_t l, Buffer<float>& dx) {
    const int64_t M = cfg.d_model, dh = cfg.d_head, A = nh * dh;
    Acts& a = acts[l];
    DeviceParam &wq = p(pname(l, "attn/wq")), &wk = p(pname(l, "attn/wk")), &wv = p(pname(l, "attn/wv"));
    DeviceParam& wo = p(pname(l, "attn/wo"));
    Buffer<float> datt, dq, dk, dv, dxn;
    zero(ctx, datt, T * A); zero(ctx, dq, T * A); zero(ctx, dk, T * A); zero(ctx, dv, T * A);
    Buffer<bf16> dx16 = half(dx.data(), T * M);
    matmul_backward(ctx, datt.data(), wo.g.data(), dx16.data(), a.att16.data(), wo.w16.data(), T, A, M);
    DeviceParam& rb = p(pname(l, "attn/rel_bias"));
    if (flash) {
      attention_flash_backward(ctx, dq.data(), dk.data(), dv.data(), rb.g.data(), datt.data(), a.att.data(),
                               a.att_lse.data(), a.q.data(), a.k.data(), a.v.data(), rb.w.data(), segments.data(),
                               B, S, nh, dh);
    } else {
      Buffer<float> scratch(B * nh * S * S);
      cuda::attention_backward(ctx, dq.data(), dk.data(), dv.data(), rb.g.data(), scratch.data(), datt.data(),
                               a.probs.data(), a.q.data(), a.k.data(), a.v.data(), segments.data(), B, S, nh, dh);
    }
    zero(ctx, dxn, T * M);
    Buffer<bf16> dq16 = half(dq.data(), T * A), dk16 = half(dk.data(), T * A), dv16 = half(dv.data(), T * A);
    matmul_backward(ctx, dxn.data(), wq.g.data(), dq16.data(), a.xn1.data(), wq.w16.data(), T, M, A);
    matmul_backward(ctx, dxn.data(), wk.g.data(), dk16.data(), a.xn1.data(), wk.w16.data(), T, M, A);
    matmul_backward(ctx, dxn.data(), wv.g.data(), dv16.data(), a.xn1.data(), wv.w16.data(), T, M, A);
    reduce_model(dxn.data(), T * M);
    DeviceParam& g1 = p(pname(l, "attn/norm_scale"));
    rmsnorm_backward(ctx, dx.data(), g1.g.data(), dxn.data(), a.x.data(), g1.w.data(), a.rstd1.data(), T, M);
    ctx.sync();  // the temporaries are freed on return
  }

  void dense_backward(int64_t l, const Buffer<float>& dout, Buffer<float>& dxn) {
    const int64_t M = cfg.d_model;
    Acts& a = acts[l];
    DeviceParam &wi0 = p(pname(l, "ffn/wi0")), &wi1 = p(pname(l, "ffn/wi1")), &wo = p(pname(l, "ffn/wo"));
    Buffer<float> dh, da0, da1;
    zero(ctx, dh, T * H); zero(ctx, da0, T * H); zero(ctx, da1, T * H);
    Buffer<bf16> dout16 = half(dout.data(), T * M);
    matmul_backward(ctx, dh.data(), wo.g.data(), dout16.data(), a.h16.data(), wo.w16.data(), T, H, M);
    geglu_backward(ctx, da0.data(), da1.data(), dh.data(), a.a0.data(), a.a1.data(), T * H);
    Buffer<bf16> da0_16 = half(da0.data(), T * H), da1_16 = half(da1.data(), T * H);
    matmul_backward(ctx, dxn.data(), wi0.g.data(), da0_16.data(), a.xn2.data(), wi0.w16.data(), T, M, H);
    matmul_backward(ctx, dxn.data(), wi1.g.data(), da1_16.data(), a.xn2.data(), wi1.w16.data(), T, M, H);
    reduce_model(dxn.data(), T * M);
    ctx.sync();
  }

  void moe_backward(int64_t l, const Buffer<float>& dout, Buffer<float>& dxn) {
    const int64_t M = cfg.d_model, E = cfg.n_experts;
    Acts& a = acts[l];
    const int64_t rows = a.plan.expert_offset[E], n = a.xplan.n_recv();
    DeviceParam &wi = p(pname(l, "moe/wi")), &wo = p(pname(l, "moe/wo")), &wg = p(pname(l, "moe/router"));
    Buffer<float> deout(rows * M), dweight(T * 2), dxout, deh, dpre, dxin, dein, dlogits;
    combine_backward(ctx, deout.data(), dweight.data(), dout.data(), a.eout.data(), a.route.row.data(),
                     a.route.g.data(), a.route.kept.data(), T, M, rows);
    ctx.sync();
    exchange_to_experts(dxout, deout.data(), rows, a.xplan);
    Buffer<bf16> dxout16 = half(dxout.data(), n * M);
    zero(ctx, deh, n * H);
    const std::vector<int64_t>& off = a.xplan.local_offsets;
    for (size_t e = 0; e + 1 < off.size(); e++)
      matmul_backward(ctx, deh.data() + off[e] * H, wo.g.data() + e * H * M, dxout16.data() + off[e] * M,
                      a.eh16.data() + off[e] * H, wo.w16.data() + e * H * M, off[e + 1] - off[e], H, M);
    zero(ctx, dpre, n * H);
    act_backward(ctx, dpre.data(), deh.data(), a.pre.data(), n * H, act());
    Buffer<bf16> dpre16 = half(dpre.data(), n * H);
    zero(ctx, dxin, n * M);
    for (size_t e = 0; e + 1 < off.size(); e++)
      matmul_backward(ctx, dxin.data() + off[e] * M, wi.g.data() + e * M * H, dpre16.data() + off[e] * H,
                      a.xin16.data() + off[e] * M, wi.w16.data() + e * M * H, off[e + 1] - off[e], M, H);
    reduce_model(dxin.data(), n * M);
    ctx.sync();
    exchange_from_experts(dein, dxin.data(), rows, a.xplan);
    dispatch_backward(ctx, dxn.data(), dein.data(), a.route.row.data(), T, M);
    // the router (replicated over model: no reduction), its bookkeeping on the host
    std::vector<float> host_dlogits(T * E, 0.0f);
    cpu::router_backward(host_dlogits.data(), dweight.download().data(), cfg.aux_loss_weight, a.plan);
    dlogits.upload(host_dlogits);
    gemm_f32(ctx, false, true, T, M, E, 1.0f, dlogits.data(), E, wg.w.data(), E, 1.0f, dxn.data(), M);
    gemm_f32(ctx, true, false, M, E, T, 1.0f, a.xn2_32.data(), M, dlogits.data(), E, 1.0f, wg.g.data(), E);
    ctx.sync();
  }
};

Engine::Engine(const Config& cfg, const Mesh& mesh, ParamTable& params)
    : impl_(std::make_unique<Impl>(cfg, mesh, params)) {}

Engine::~Engine() = default;

LossParts Engine::forward(const Batch& batch, bool no_drop, int64_t step) {
  impl_->step = step;
  return impl_->forward(batch, no_drop);
}

void Engine::backward() { impl_->backward(); }
double Engine::grad_norm() { return impl_->grad_norm(); }
void Engine::optimizer_step(Adafactor& opt, double lr, int64_t t) { impl_->optimizer_step(opt, lr, t); }
void Engine::to_host(Adafactor* opt) { impl_->to_host(opt); }
void Engine::to_device(const Adafactor* opt) { impl_->to_device(opt); }

std::vector<float> Engine::logits() const {
  impl_->ctx.sync();
  return impl_->logits.download();
}

std::vector<float> Engine::lse() const {
  impl_->ctx.sync();
  return impl_->lse.download();
}

}  // namespace glam::cuda
