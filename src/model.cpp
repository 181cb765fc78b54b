// GLaM forward and backward on this rank's shard. Conventions: T = B*S tokens of
// this rank's rows, M = d_model, A = local heads * d_head, H = local hidden.
// Tensor-parallel reductions (model axis) sit right after the row-parallel
// matmuls (attention Wo, FFN Wo, expert Wo) and after the input gradients of the
// column-parallel ones; each layer's backward does its own, so a replicated path
// (the router) is never summed twice.
#include "glam/model.h"

#include <cmath>
#include <cstdio>

#include "glam/adafactor.h"
#include "glam/check.h"
#ifdef GLAM_WITH_CUDA
#include "glam/cuda/engine.h"
#endif

namespace glam {

namespace {
void zeros(std::vector<float>& v, int64_t n) { v.assign(n, 0.0f); }
void add_into(std::vector<float>& y, const std::vector<float>& x) {
  for (size_t i = 0; i < y.size(); i++) y[i] += x[i];
}
}  // namespace

cpu::RouterOptions router_options(const ModelConfig& cfg, const Mesh& mesh, uint64_t seed, int64_t step,
                                  int64_t layer, int64_t T, bool no_drop) {
  cpu::RouterOptions opt;
  opt.n_experts = cfg.n_experts;
  opt.group_size = cfg.group_size;
  opt.capacity_factor = cfg.capacity_factor;
  opt.second = cfg.second_policy == "random" ? cpu::SecondPolicy::random : cpu::SecondPolicy::all;
  opt.no_drop = no_drop;
  opt.n_groups_global = no_drop ? 0 : T * mesh.data_size / cfg.group_size;
  opt.seed = seed ^ (0x51ed270b27f0a5c3ULL * static_cast<uint64_t>(step * 1024 + layer + 1));
  opt.token_offset = T * mesh.data_rank;
  return opt;
}

void add_output_loss(LossParts& parts, const cpu::LossSums& sums, const ModelConfig& cfg, const Mesh& mesh) {
  double global[3] = {sums.ce, sums.z, static_cast<double>(sums.count)};
  mesh.allreduce_sum_data(global, 3);
  parts.n_targets = static_cast<int64_t>(global[2]);
  const double n = std::max(1.0, global[2]);
  parts.ce = global[0] / n;
  parts.z = global[1] / n;
  parts.loss = parts.ce + cfg.aux_loss_weight * parts.aux + cfg.z_loss_weight * parts.z;
}

void add_routing_statistics(LossParts& parts, const cpu::RoutingPlan& plan, int64_t T, const Mesh& mesh) {
  const int64_t E = plan.E;
  std::vector<double> stats(2 * E + 2);  // [aux, dropped, load_before[E], load_after[E]]
  stats[0] = plan.aux;
  stats[1] = static_cast<double>(plan.dropped);
  for (int64_t e = 0; e < E; e++) {
    stats[2 + e] = static_cast<double>(plan.load_before[e]);
    stats[2 + E + e] = static_cast<double>(plan.load_after[e]);
  }
  mesh.allreduce_sum_data(stats.data(), static_cast<int64_t>(stats.size()));
  parts.aux += stats[0];
  parts.choices += 2 * T * mesh.data_size;
  parts.dropped += static_cast<int64_t>(stats[1]);
  parts.layer_dropped.push_back(static_cast<int64_t>(stats[1]));
  parts.load_before.emplace_back(E);
  parts.load_after.emplace_back(E);
  for (int64_t e = 0; e < E; e++) {
    parts.load_before.back()[e] = static_cast<int64_t>(stats[2 + e]);
    parts.load_after.back()[e] = static_cast<int64_t>(stats[2 + E + e]);
  }
}

Model::Model(const Config& cfg, const Mesh& mesh, Device device)
    : cfg_(cfg.model), mesh_(mesh), seed_(cfg.train.seed), params_(build_params(cfg.model, mesh)) {
  init_params(params_, seed_, mesh);
  nh_ = cfg_.n_heads / mesh.model_size;
  H_ = cfg_.d_ff / mesh.model_size;
  if (cfg_.n_experts > 0) place_ = mesh.place_experts(cfg_.n_experts);
  V_ = cfg_.vocab_size / mesh.model_size;
  v0_ = V_ * mesh.model_rank;
  acts_.resize(cfg_.n_layers);
  gemm_ = cpu::parse_precision(cfg.train.cpu_precision, "train.cpu_precision");
  if (device == Device::cuda) {
#ifdef GLAM_WITH_CUDA
    gpu_ = std::make_shared<cuda::Engine>(cfg, mesh, params_);
#else
    throw UserError("--device cuda: this build has no CUDA backend");
#endif
  }
}

const std::vector<float>& Model::logits() const {
  fetch_gpu_outputs();
  return logits_;
}

double Model::grad_norm() const {
#ifdef GLAM_WITH_CUDA
  if (gpu_) return gpu_->grad_norm();
#endif
  return global_grad_norm(params_, mesh_);
}

void Model::optimizer_step(Adafactor& opt, double lr, int64_t t) {
#ifdef GLAM_WITH_CUDA
  if (gpu_) return gpu_->optimizer_step(opt, lr, t);
#endif
  opt.step(params_, lr, t, mesh_);
}

void Model::sync_to_host(Adafactor* opt) {
#ifdef GLAM_WITH_CUDA
  if (gpu_) gpu_->to_host(opt);
#endif
}

void Model::sync_to_device(const Adafactor* opt) {
#ifdef GLAM_WITH_CUDA
  if (gpu_) gpu_->to_device(opt);
#endif
}

void Model::fetch_gpu_outputs() const {
#ifdef GLAM_WITH_CUDA
  if (!gpu_outputs_stale_) return;
  logits_ = gpu_->logits();
  lse_ = gpu_->lse();
  gpu_outputs_stale_ = false;
#endif
}

std::string Model::pname(int64_t l, const char* what) const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "layer_%02lld/%s", static_cast<long long>(l), what);
  return buf;
}

// ---- forward -------------------------------------------------------------------

LossParts Model::forward(const Batch& batch, bool no_drop, bool frozen) {
  const int64_t M = cfg_.d_model, L = cfg_.n_layers;
  batch_ = &batch;
  B_ = batch.rows; S_ = batch.seq_len; T_ = B_ * S_;
  parts_ = LossParts{};
  for (int32_t id : batch.ids)
    GLAM_REQUIRE(id >= 0 && id < cfg_.vocab_size, "token id ", id, " outside the vocabulary [0, ",
                 cfg_.vocab_size, ")");
#ifdef GLAM_WITH_CUDA
  if (gpu_) {
    GLAM_REQUIRE(!frozen, "frozen routing (finite-difference tests) runs on the CPU only");
    ScopedPhase phase(timers, "gpu_forward");
    parts_ = gpu_->forward(batch, no_drop, step_);
    gpu_outputs_stale_ = true;
    return parts_;
  }
#endif

  std::vector<float>& x0 = acts_[0].x;  // [T, M]
  x0.resize(T_ * M);
  cpu::embedding_forward(x0.data(), batch.ids.data(), params_.get("embedding").w.data(), T_, M, v0_, V_);
  mesh_.allreduce_sum_model(x0.data(), T_ * M);

  std::vector<float> ffn_out;  // [T, M]
  for (int64_t l = 0; l < L; l++) {
    LayerActs& a = acts_[l];
    {
      ScopedPhase phase(timers, "attention");
      attention_forward(l);
    }
    a.xn2.resize(T_ * M); a.rstd2.resize(T_);
    cpu::rmsnorm_forward(a.xn2.data(), a.rstd2.data(), a.x_mid.data(),
                         params_.get(pname(l, "ffn/norm_scale")).w.data(), T_, M);
    if (cfg_.is_moe_layer(l)) {
      moe_forward(l, ffn_out, no_drop, frozen);
    } else {
      ScopedPhase phase(timers, "dense_ffn");
      dense_forward(l, ffn_out);
    }
    std::vector<float>& next = l + 1 < L ? acts_[l + 1].x : x_final;
    next = a.x_mid;
    add_into(next, ffn_out);
  }

  ScopedPhase phase(timers, "output");
  xnf.resize(T_ * M); rstdf.resize(T_);
  cpu::rmsnorm_forward(xnf.data(), rstdf.data(), x_final.data(),
                       params_.get("final_norm_scale").w.data(), T_, M);
  logits_.resize(T_ * V_); lse_.resize(T_);
  cpu::logits_forward(logits_.data(), xnf.data(), params_.get("embedding").w.data(), T_, M, V_,
                      1.0f / std::sqrt(static_cast<float>(M)), gemm_);
  const cpu::LossSums sums = kern_.softmax_xent_forward(lse_.data(), logits_.data(), batch.targets.data(),
                                                       T_, V_, v0_, mesh_);
  add_output_loss(parts_, sums, cfg_, mesh_);
  return parts_;
}

void Model::attention_forward(int64_t l) {
  const int64_t M = cfg_.d_model, dh = cfg_.d_head, A = nh_ * dh;
  LayerActs& a = acts_[l];
  a.xn1.resize(T_ * M); a.rstd1.resize(T_);
  cpu::rmsnorm_forward(a.xn1.data(), a.rstd1.data(), a.x.data(),
                       params_.get(pname(l, "attn/norm_scale")).w.data(), T_, M);
  a.q.resize(T_ * A); a.k.resize(T_ * A); a.v.resize(T_ * A);
  cpu::matmul_forward(a.q.data(), a.xn1.data(), params_.get(pname(l, "attn/wq")).w.data(), T_, M, A, gemm_);
  cpu::matmul_forward(a.k.data(), a.xn1.data(), params_.get(pname(l, "attn/wk")).w.data(), T_, M, A, gemm_);
  cpu::matmul_forward(a.v.data(), a.xn1.data(), params_.get(pname(l, "attn/wv")).w.data(), T_, M, A, gemm_);
  a.probs.resize(B_ * nh_ * S_ * S_); a.att.resize(T_ * A);
  kern_.attention_forward(a.att.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(),
                         params_.get(pname(l, "attn/rel_bias")).w.data(), batch_->segments.data(),
                         B_, S_, nh_, dh);
  a.x_mid.resize(T_ * M);
  cpu::matmul_forward(a.x_mid.data(), a.att.data(), params_.get(pname(l, "attn/wo")).w.data(), T_, A, M, gemm_);
  mesh_.allreduce_sum_model(a.x_mid.data(), T_ * M);
  add_into(a.x_mid, a.x);
}

void Model::dense_forward(int64_t l, std::vector<float>& out) {
  const int64_t M = cfg_.d_model;
  LayerActs& a = acts_[l];
  a.a0.resize(T_ * H_); a.a1.resize(T_ * H_); a.h.resize(T_ * H_); out.resize(T_ * M);
  cpu::matmul_forward(a.a0.data(), a.xn2.data(), params_.get(pname(l, "ffn/wi0")).w.data(), T_, M, H_, gemm_);
  cpu::matmul_forward(a.a1.data(), a.xn2.data(), params_.get(pname(l, "ffn/wi1")).w.data(), T_, M, H_, gemm_);
  kern_.geglu_forward(a.h.data(), a.a0.data(), a.a1.data(), T_ * H_);
  cpu::matmul_forward(out.data(), a.h.data(), params_.get(pname(l, "ffn/wo")).w.data(), T_, H_, M, gemm_);
  mesh_.allreduce_sum_model(out.data(), T_ * M);
}

void Model::moe_forward(int64_t l, std::vector<float>& out, bool no_drop, bool frozen) {
  const int64_t M = cfg_.d_model, E = cfg_.n_experts;
  LayerActs& a = acts_[l];
  {  // route
    ScopedPhase phase(timers, "router");
    a.router_logits.resize(T_ * E);
    cpu::matmul_forward(a.router_logits.data(), a.xn2.data(), params_.get(pname(l, "moe/router")).w.data(),
                        T_, M, E, cpu::Precision::fp32);  // the router stays fp32
    const cpu::RouterOptions opt = router_options(cfg_, mesh_, seed_, step_, l, T_, no_drop);
    if (frozen) {
      const cpu::RoutingPlan previous = a.plan;
      cpu::router_forward(a.plan, a.router_logits.data(), T_, opt, &previous);
    } else {
      cpu::router_forward(a.plan, a.router_logits.data(), T_, opt);
    }
  }
  {  // dispatch: router order -> rows of this rank's experts
    ScopedPhase phase(timers, "dispatch");
    a.ein.resize(a.plan.expert_offset[E] * M);
    cpu::dispatch_forward(a.ein.data(), a.xn2.data(), a.plan, M);
    a.xplan = plan_exchange(a.plan, place_, mesh_);
    send_to_experts(a.xin, a.ein, a.xplan, mesh_, M);
  }
  {  // experts (hidden dim split over model: sum the partial outputs)
    ScopedPhase phase(timers, "experts");
    const int64_t n = a.xplan.n_recv();
    a.pre.resize(n * H_); a.eh.resize(n * H_); a.xout.resize(n * M);
    kern_.experts_forward(a.xout.data(), a.pre.data(), a.eh.data(), a.xin.data(),
                         params_.get(pname(l, "moe/wi")).w.data(), params_.get(pname(l, "moe/wo")).w.data(),
                         a.xplan.local_offsets, M, H_, expert_act(), gemm_);
    mesh_.allreduce_sum_model(a.xout.data(), n * M);
  }
  {  // combine: back to router order, then weight and sum the two choices
    ScopedPhase phase(timers, "combine");
    return_from_experts(a.eout, a.xout, a.xplan, mesh_, M);
    out.resize(T_ * M);
    cpu::combine_forward(out.data(), a.eout.data(), a.plan, M);
  }
  add_routing_statistics(parts_, a.plan, T_, mesh_);
}

// ---- inference with a KV cache -----------------------------------------------

void KVCache::reset(int64_t B, int64_t cap, int64_t n_layers, int64_t w) {
  rows = B; capacity = cap; len = 0; width = w;
  k.assign(n_layers, std::vector<float>(B * cap * w, 0.0f));
  v.assign(n_layers, std::vector<float>(B * cap * w, 0.0f));
}

void KVCache::reorder(const std::vector<int64_t>& parent) {
  for (auto* layers : {&k, &v})
    for (std::vector<float>& t : *layers) {
      const std::vector<float> old = t;
      for (int64_t r = 0; r < rows; r++)
        std::copy(old.begin() + parent[r] * capacity * width, old.begin() + (parent[r] + 1) * capacity * width,
                  t.begin() + r * capacity * width);
    }
}

void Model::forward_cached(KVCache& cache, const std::vector<int32_t>& ids, int64_t n) {
  const int64_t M = cfg_.d_model, L = cfg_.n_layers, dh = cfg_.d_head, A = nh_ * dh, B = cache.rows;
  GLAM_REQUIRE(cache.len + n <= cache.capacity, "KV cache holds ", cache.capacity, " positions; ", cache.len + n, " asked");
  B_ = B; S_ = n; T_ = B * n;
  batch_ = nullptr;
  gpu_outputs_stale_ = false;  // decoding runs on the CPU layers
  parts_ = LossParts{};
  std::vector<float> x(T_ * M), ffn_out;
  cpu::embedding_forward(x.data(), ids.data(), params_.get("embedding").w.data(), T_, M, v0_, V_);
  mesh_.allreduce_sum_model(x.data(), T_ * M);
  for (int64_t l = 0; l < L; l++) {
    LayerActs& a = acts_[l];
    a.xn1.resize(T_ * M); a.rstd1.resize(T_);
    cpu::rmsnorm_forward(a.xn1.data(), a.rstd1.data(), x.data(), params_.get(pname(l, "attn/norm_scale")).w.data(), T_, M);
    a.q.resize(T_ * A); a.k.resize(T_ * A); a.v.resize(T_ * A); a.att.resize(T_ * A);
    cpu::matmul_forward(a.q.data(), a.xn1.data(), params_.get(pname(l, "attn/wq")).w.data(), T_, M, A, gemm_);
    cpu::matmul_forward(a.k.data(), a.xn1.data(), params_.get(pname(l, "attn/wk")).w.data(), T_, M, A, gemm_);
    cpu::matmul_forward(a.v.data(), a.xn1.data(), params_.get(pname(l, "attn/wv")).w.data(), T_, M, A, gemm_);
    for (int64_t b = 0; b < B; b++)  // append the new keys and values
      for (int64_t j = 0; j < n; j++) {
        const int64_t dst = (b * cache.capacity + cache.len + j) * A, src = (b * n + j) * A;
        std::copy(a.k.begin() + src, a.k.begin() + src + A, cache.k[l].begin() + dst);
        std::copy(a.v.begin() + src, a.v.begin() + src + A, cache.v[l].begin() + dst);
      }
    cpu::attention_decode(a.att.data(), a.q.data(), cache.k[l].data(), cache.v[l].data(),
                          params_.get(pname(l, "attn/rel_bias")).w.data(), B, n, cache.len, cache.capacity, nh_, dh);
    a.x_mid.resize(T_ * M);
    cpu::matmul_forward(a.x_mid.data(), a.att.data(), params_.get(pname(l, "attn/wo")).w.data(), T_, A, M, gemm_);
    mesh_.allreduce_sum_model(a.x_mid.data(), T_ * M);
    add_into(a.x_mid, x);
    a.xn2.resize(T_ * M); a.rstd2.resize(T_);
    cpu::rmsnorm_forward(a.xn2.data(), a.rstd2.data(), a.x_mid.data(), params_.get(pname(l, "ffn/norm_scale")).w.data(), T_, M);
    if (cfg_.is_moe_layer(l)) moe_forward(l, ffn_out, /*no_drop=*/true, false);
    else dense_forward(l, ffn_out);
    x = a.x_mid;
    add_into(x, ffn_out);
  }
  cache.len += n;
  xnf.resize(T_ * M); rstdf.resize(T_);
  cpu::rmsnorm_forward(xnf.data(), rstdf.data(), x.data(), params_.get("final_norm_scale").w.data(), T_, M);
  logits_.resize(T_ * V_);
  cpu::logits_forward(logits_.data(), xnf.data(), params_.get("embedding").w.data(), T_, M, V_,
                      1.0f / std::sqrt(static_cast<float>(M)), gemm_);
}

std::vector<double> Model::target_logprobs() const {
  GLAM_ASSERT(batch_ != nullptr);
  fetch_gpu_outputs();
  std::vector<float> target_logit(T_, 0.0f);
  for (int64_t t = 0; t < T_; t++) {
    const int64_t c = batch_->targets[t] - v0_;
    if (batch_->targets[t] >= 0 && c >= 0 && c < V_) target_logit[t] = logits_[t * V_ + c];
  }
  mesh_.allreduce_sum_model(target_logit.data(), T_);
  std::vector<double> lp(T_, 0.0);
  for (int64_t t = 0; t < T_; t++)
    if (batch_->targets[t] >= 0) lp[t] = static_cast<double>(target_logit[t]) - lse_[t];
  return lp;
}

// ---- backward ------------------------------------------------------------------

void Model::backward() {
#ifdef GLAM_WITH_CUDA
  if (gpu_) {
    ScopedPhase phase(timers, "gpu_backward");
    gpu_->backward();
    return;
  }
#endif
  const int64_t M = cfg_.d_model, L = cfg_.n_layers;
  const Batch& batch = *batch_;
  Param& emb = params_.get("embedding");
  std::vector<float> dx(T_ * M, 0.0f);  // gradient of the residual stream
  {
    ScopedPhase phase(timers, "output");
    const double n = std::max<int64_t>(1, parts_.n_targets);
    std::vector<float> dxnf(T_ * M, 0.0f);
    std::vector<float>& dlogits = dlogits_;
    dlogits.resize(T_ * V_);
    kern_.softmax_xent_backward(dlogits.data(), logits_.data(), lse_.data(), batch.targets.data(), T_, V_,
                               v0_, static_cast<float>(1.0 / n), static_cast<float>(cfg_.z_loss_weight / n));
    cpu::logits_backward(dxnf.data(), emb.g.data(), dlogits.data(), xnf.data(), emb.w.data(), T_, M, V_,
                         1.0f / std::sqrt(static_cast<float>(M)), gemm_);
    mesh_.allreduce_sum_model(dxnf.data(), T_ * M);
    Param& gf = params_.get("final_norm_scale");
    cpu::rmsnorm_backward(dx.data(), gf.g.data(), dxnf.data(), x_final.data(), gf.w.data(), rstdf.data(), T_, M);
  }

  std::vector<float> dxn;
  for (int64_t l = L - 1; l >= 0; l--) {
    LayerActs& a = acts_[l];
    zeros(dxn, T_ * M);
    if (cfg_.is_moe_layer(l)) {
      moe_backward(l, dx, dxn);
    } else {
      ScopedPhase phase(timers, "dense_ffn");
      dense_backward(l, dx, dxn);
    }
    Param& g2 = params_.get(pname(l, "ffn/norm_scale"));
    cpu::rmsnorm_backward(dx.data(), g2.g.data(), dxn.data(), a.x_mid.data(), g2.w.data(), a.rstd2.data(), T_, M);
    ScopedPhase phase(timers, "attention");
    attention_backward(l, dx);
  }
  cpu::embedding_backward(emb.g.data(), dx.data(), batch.ids.data(), T_, M, v0_, V_);
  ScopedPhase phase(timers, "grad_reduce");
  reduce_gradients();
}

// Data parallelism: parameters replicated over the data axis sum their gradients
// over it; experts sum over the ranks holding the same expert (if replicated).
// Over the model axis replicated parameters already hold identical gradients.
void Model::reduce_gradients() {
  for (Param& p : params_.params) {
    if (p.data_axis < 0) mesh_.allreduce_sum_data(p.g.data(), p.size());
    else if (p.data_replicas > 1) mesh_.allreduce_sum(p.g.data(), p.size(), place_.replica_comm);
  }
}

// dx holds d x_mid on entry and d x on exit (residual plus the normed path).
void Model::attention_backward(int64_t l, std::vector<float>& dx) {
  const int64_t M = cfg_.d_model, dh = cfg_.d_head, A = nh_ * dh;
  LayerActs& a = acts_[l];
  Param& wq = params_.get(pname(l, "attn/wq"));
  Param& wk = params_.get(pname(l, "attn/wk"));
  Param& wv = params_.get(pname(l, "attn/wv"));
  Param& wo = params_.get(pname(l, "attn/wo"));
  std::vector<float> datt(T_ * A, 0.0f), dq(T_ * A, 0.0f), dk(T_ * A, 0.0f), dv(T_ * A, 0.0f);
  cpu::matmul_backward(datt.data(), wo.g.data(), dx.data(), a.att.data(), wo.w.data(), T_, A, M, gemm_);
  kern_.attention_backward(dq.data(), dk.data(), dv.data(), params_.get(pname(l, "attn/rel_bias")).g.data(),
                          datt.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(),
                          batch_->segments.data(), B_, S_, nh_, dh);
  std::vector<float> dxn(T_ * M, 0.0f);
  cpu::matmul_backward(dxn.data(), wq.g.data(), dq.data(), a.xn1.data(), wq.w.data(), T_, M, A, gemm_);
  cpu::matmul_backward(dxn.data(), wk.g.data(), dk.data(), a.xn1.data(), wk.w.data(), T_, M, A, gemm_);
  cpu::matmul_backward(dxn.data(), wv.g.data(), dv.data(), a.xn1.data(), wv.w.data(), T_, M, A, gemm_);
  mesh_.allreduce_sum_model(dxn.data(), T_ * M);
  Param& g1 = params_.get(pname(l, "attn/norm_scale"));
  cpu::rmsnorm_backward(dx.data(), g1.g.data(), dxn.data(), a.x.data(), g1.w.data(), a.rstd1.data(), T_, M);
}

void Model::dense_backward(int64_t l, const std::vector<float>& dout, std::vector<float>& dxn) {
  const int64_t M = cfg_.d_model;
  LayerActs& a = acts_[l];
  Param& wi0 = params_.get(pname(l, "ffn/wi0"));
  Param& wi1 = params_.get(pname(l, "ffn/wi1"));
  Param& wo = params_.get(pname(l, "ffn/wo"));
  std::vector<float> dh(T_ * H_, 0.0f), da0(T_ * H_, 0.0f), da1(T_ * H_, 0.0f);
  cpu::matmul_backward(dh.data(), wo.g.data(), dout.data(), a.h.data(), wo.w.data(), T_, H_, M, gemm_);
  kern_.geglu_backward(da0.data(), da1.data(), dh.data(), a.a0.data(), a.a1.data(), T_ * H_);
  cpu::matmul_backward(dxn.data(), wi0.g.data(), da0.data(), a.xn2.data(), wi0.w.data(), T_, M, H_, gemm_);
  cpu::matmul_backward(dxn.data(), wi1.g.data(), da1.data(), a.xn2.data(), wi1.w.data(), T_, M, H_, gemm_);
  mesh_.allreduce_sum_model(dxn.data(), T_ * M);
}

void Model::moe_backward(int64_t l, const std::vector<float>& dout, std::vector<float>& dxn) {
  const int64_t M = cfg_.d_model, E = cfg_.n_experts;
  LayerActs& a = acts_[l];
  const cpu::RoutingPlan& plan = a.plan;
  const int64_t rows = plan.expert_offset[E], n = a.xplan.n_recv();
  Param& wi = params_.get(pname(l, "moe/wi"));
  Param& wo = params_.get(pname(l, "moe/wo"));
  Param& wg = params_.get(pname(l, "moe/router"));
  std::vector<float> deout(rows * M), dweight(T_ * 2), dxout, dxin(n * M, 0.0f), dein;
  {  // combine backward: gradients of the expert outputs and of the combine weights
    ScopedPhase phase(timers, "combine");
    cpu::combine_backward(deout.data(), dweight.data(), dout.data(), a.eout.data(), plan, M);
    send_to_experts(dxout, deout, a.xplan, mesh_, M);
  }
  {  // experts backward (hidden dim split over model: sum the input gradient)
    ScopedPhase phase(timers, "experts");
    std::vector<float> scratch(n * H_);
    kern_.experts_backward(dxin.data(), wi.g.data(), wo.g.data(), scratch.data(), dxout.data(), a.xin.data(),
                          a.pre.data(), a.eh.data(), wi.w.data(), wo.w.data(), a.xplan.local_offsets, M, H_,
                          expert_act(), gemm_);
    mesh_.allreduce_sum_model(dxin.data(), n * M);
  }
  {  // dispatch backward
    ScopedPhase phase(timers, "dispatch");
    return_from_experts(dein, dxin, a.xplan, mesh_, M);
    cpu::dispatch_backward(dxn.data(), dein.data(), plan, M);
  }
  ScopedPhase phase(timers, "router");  // replicated over model: no reduction
  std::vector<float> dlogits(T_ * E, 0.0f);
  cpu::router_backward(dlogits.data(), dweight.data(), cfg_.aux_loss_weight, plan);
  cpu::matmul_backward(dxn.data(), wg.g.data(), dlogits.data(), a.xn2.data(), wg.w.data(), T_, M, E,
                       cpu::Precision::fp32);  // the router stays fp32
}

}  // namespace glam
