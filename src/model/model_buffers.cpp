// The model's buffers: the backend it runs on, the table of activation and
// backward tensors (one arena, carved anew when the batch shape changes), the KV
// cache, and the host views of its outputs and parameters.
#include <algorithm>
#include <cstdio>

#include "glam/model/adafactor.h"
#include "glam/base/check.h"
#include "glam/model/model.h"

namespace glam {

namespace {

std::string lname(int64_t l, const char* what) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "layer_%02lld/%s", static_cast<long long>(l), what);
  return buf;
}

}  // namespace

Model::Model(const Config& cfg, const Mesh& mesh, Device device)
    : Model(cfg, mesh,
            device == Device::cuda
                ? make_cuda_backend(cfg, mesh)
                : make_cpu_backend(mesh, false, cpu::parse_precision(cfg.train.cpu_precision, "train.cpu_precision"))) {}

Model::Model(const Config& cfg, const Mesh& mesh, std::unique_ptr<Backend> backend)
    : cfg_(cfg.model), mesh_(mesh), seed_(cfg.train.seed), params_(build_params(cfg.model, mesh)),
      be_(std::move(backend)) {
  init_params(params_, seed_, mesh);
  device_ = be_->device();
  gemm_ = cpu::parse_precision(cfg.train.cpu_precision, "train.cpu_precision");
  remat_ = cfg.train.remat;
  bf16_exchanges_ = cfg.train.exchange_dtype == "bf16";
  GLAM_REQUIRE(device_ == Device::cpu || !bf16_exchanges_, "train.exchange_dtype bf16 runs on the CPU backend only "
               "so far; set it to fp32 with --device cuda");
  exchange_chunks_ = cfg.train.exchange_chunks;
  GLAM_REQUIRE(device_ == Device::cpu || exchange_chunks_ == 1, "train.exchange_chunks ", exchange_chunks_,
               " runs on the CPU backend only so far; set train.exchange_chunks 1 with --device cuda");
  if (cfg.train.shard_state) {
    GLAM_REQUIRE(device_ == Device::cpu, "train.shard_state runs on the CPU backend only so far; set it to false "
                 "with --device cuda");
    shard_state_over_data(params_, mesh);
    if (cfg.train.shard_weights) shard_weights_over_data(params_);  // dropped by sync_to_device
  }
  nh_ = cfg_.n_heads / mesh.model_size;
  H_ = cfg_.d_ff / mesh.model_size;
  if (cfg_.n_experts > 0) place_ = mesh.place_experts(cfg_.n_experts);
  V_ = cfg_.vocab_size / mesh.model_size;
  v0_ = V_ * mesh.model_rank;
  acts_.resize(cfg_.n_layers);
  for (size_t i = 0; i < params_.params.size(); i++) index_[params_.params[i].name] = i;
  p_emb_ = index_.at("embedding");
  p_final_ = index_.at("final_norm_scale");
  outer_params_ = {p_emb_, p_final_};
  layer_params_.assign(cfg_.n_layers, {});
  for (int64_t l = 0; l < cfg_.n_layers; l++)
    for (size_t i = 0; i < params_.params.size(); i++)
      if (params_.params[i].name.rfind(lname(l, ""), 0) == 0) layer_params_[l].push_back(i);
  rebind(nullptr);
}

Model::~Model() = default;

size_t Model::pid(int64_t l, const char* what) const {
  const auto it = index_.find(lname(l, what));
  GLAM_ASSERT(it != index_.end());
  return it->second;
}

// (Re)attaches the parameters to the backend; the activation arena starts empty.
void Model::rebind(std::unique_ptr<Backend> backend) {
  acts_arena_.reset();  // the old backend's memory goes back to it first
  expert_arenas_.clear();
  expert_grads_.reset();
  expert_out_.reset();
  expert_out_rows_ = 0;
  if (backend) be_ = std::move(backend);
  be_->set_bf16_exchanges(bf16_exchanges_);
  be_->bind_params(params_);
  acts_arena_ = std::make_unique<Arena>(*be_);
  B_ = S_ = T_ = 0;
}

void Model::use_reference_kernels(bool on) {
  GLAM_REQUIRE(device_ == Device::cpu, "the reference kernels are the CPU backend's");
  reference_kernels_ = on;
  rebind(make_cpu_backend(mesh_, reference_kernels_, gemm_));
}

void Model::set_cpu_precision(cpu::Precision p) {
  gemm_ = p;
  if (device_ != Device::cpu) return;  // the CUDA backend always multiplies in bf16
  rebind(make_cpu_backend(mesh_, reference_kernels_, gemm_));
}

// The tensor table for B rows of S tokens. MoE buffers hold the most rows routing
// can produce: a rank dispatches at most 2T rows (each at most C per group and
// expert), and receives for each local expert at most min(T, C * G) rows from each
// rank that sends to it, never more than the 2 T D choices of the whole batch.
void Model::plan_buffers(int64_t B, int64_t S, bool no_drop, bool decode) {
  if (B == B_ && S == S_ && no_drop == planned_no_drop_ && decode == planned_decode_) return;
  B_ = B; S_ = S; T_ = B * S;
  planned_no_drop_ = no_drop;
  planned_decode_ = decode;
  const int64_t T = T_, M = cfg_.d_model, A = nh_ * cfg_.d_head, E = cfg_.n_experts, H = H_, Vl = V_;
  const DType gd = be_->gemm_dtype(), f32 = DType::f32;
  if (E > 0) {
    const int64_t S_group = no_drop ? T : cfg_.group_size;
    const int64_t G = std::max<int64_t>(1, T / std::max<int64_t>(1, S_group));
    const int64_t C = no_drop ? T : cpu::expert_capacity(S_group, cfg_.capacity_factor, E);
    const int64_t senders = mesh_.data_size / place_.replicas;
    rows_max_ = std::min(2 * T, E * std::min(T, C * G));
    recv_max_ = std::min(2 * T * mesh_.data_size, place_.local * senders * std::min(T, C * G));
  }
  // train.remat: the layers keep their inputs x; the rest is one set that each
  // layer's forward (and its recompute in the backward) writes: layer 0's for
  // what every layer has, the first layer's of a kind for what only MoE or dense
  // layers have (share_layer_views).
  shared_acts_ = remat_ && !decode;
  const int64_t first_dense = cfg_.n_experts > 0 ? 1 : 0;
  Arena& ar = *acts_arena_;
  ar.clear();
  ar.add(ids_, "ids", DType::i32, {T});
  ar.add(targets_, "targets", DType::i32, {T});
  ar.add(segments_, "segments", DType::i32, {T});
  for (int64_t l = 0; l < cfg_.n_layers; l++) {
    LayerActs& a = acts_[l];
    const bool moe = cfg_.is_moe_layer(l);
    ar.add(a.x, lname(l, "x"), f32, {T, M});
    if (shared_acts_ && l > first_dense) continue;
    if (!shared_acts_ || l == 0) {
      ar.add(a.xn1, lname(l, "xn1"), gd, {T, M});
      ar.add(a.rstd1, lname(l, "rstd1"), f32, {T});
      ar.add(a.q, lname(l, "q"), f32, {T, A});
      ar.add(a.k, lname(l, "k"), f32, {T, A});
      ar.add(a.v, lname(l, "v"), f32, {T, A});
      if (!decode) ar.add(a.att_state, lname(l, "att_state"), f32, be_->attention_state_shape(B, S, nh_));
      ar.add(a.att, lname(l, "att"), f32, {T, A});
      ar.add(a.x_mid, lname(l, "x_mid"), f32, {T, M});
      ar.add(a.xn2, lname(l, "xn2"), gd, {T, M});
      ar.add(a.rstd2, lname(l, "rstd2"), f32, {T});
    }
    if (shared_acts_ && l != (moe ? 0 : first_dense)) continue;
    if (moe && gd != f32) ar.add(a.xn2_f32, lname(l, "xn2_f32"), f32, {T, M});
    if (moe) {
      const int64_t G = no_drop ? 1 : std::max<int64_t>(1, T / cfg_.group_size);
      ar.add(a.router_logits, lname(l, "router_logits"), f32, {T, E});
      ar.add(a.route.gates, lname(l, "gates"), f32, {T, E});
      ar.add(a.route.expert, lname(l, "expert"), DType::i32, {T, 2});
      ar.add(a.route.g, lname(l, "g"), f32, {T, 2});
      ar.add(a.route.kept, lname(l, "kept"), DType::u8, {T, 2});
      ar.add(a.route.slot, lname(l, "slot"), DType::i32, {T, 2});
      ar.add(a.route.row, lname(l, "row"), DType::i32, {T, 2});
      ar.add(a.route.first_frac, lname(l, "first_frac"), f32, {G, E});
      // ein lives only until the layer has sent it: one for every MoE layer
      if (l == 0) ar.add(a.ein, "ein", f32, {rows_max_, M});
      ar.add(a.eout, lname(l, "eout"), f32, {rows_max_, M});
    } else {
      ar.add(a.a0, lname(l, "a0"), f32, {T, H});
      ar.add(a.a1, lname(l, "a1"), f32, {T, H});
      ar.add(a.h, lname(l, "h"), gd, {T, H});
    }
  }
  ar.add(x_final, "x_final", f32, {T, M});
  ar.add(xnf, "xnf", gd, {T, M});
  ar.add(rstdf, "rstdf", f32, {T});
  ar.add(logits_, "logits", f32, {T, Vl});
  ar.add(lse_, "lse", f32, {T});
  GradActs& d = grads_;
  ar.add(d.dffn, "ffn_out", f32, {T, M});
  if (!decode) {
    ar.add(d.dx, "d/x", f32, {T, M});
    ar.add(d.dxn, "d/xn", f32, {T, M});
    ar.add(d.dlogits, "d/logits", f32, {T, Vl});
    ar.add(d.datt, "d/att", f32, {T, A});
    ar.add(d.dq, "d/q", f32, {T, A});
    ar.add(d.dk, "d/k", f32, {T, A});
    ar.add(d.dv, "d/v", f32, {T, A});
    if (cfg_.n_layers > cfg_.n_moe_layers()) {
      ar.add(d.dh, "d/h", f32, {T, H});
      ar.add(d.da0, "d/a0", f32, {T, H});
      ar.add(d.da1, "d/a1", f32, {T, H});
    }
    if (E > 0) {
      ar.add(d.drouter, "d/router_logits", f32, {T, E});
      ar.add(d.dweight, "d/combine_weight", f32, {T, 2});
      ar.add(d.deout, "d/eout", f32, {rows_max_, M});
      ar.add(d.dein, "d/ein", f32, {rows_max_, M});
    }
  }
  ar.commit();
  if (shared_acts_) share_layer_views();
  for (int64_t l = 1; l < cfg_.n_layers; l++)
    if (cfg_.is_moe_layer(l)) acts_[l].ein = acts_[0].ein;
  for (int64_t l = 0; l < cfg_.n_layers; l++) {
    if (gd == f32) acts_[l].xn2_f32 = acts_[l].xn2;            // the router reads xn2 itself
    else if (!cfg_.is_moe_layer(l)) acts_[l].xn2_f32 = Tensor{};  // no router
    if (cfg_.is_moe_layer(l)) size_expert_rows(l, recv_max_);
  }
  if (E > 0 && !decode) size_expert_grads(recv_max_);
}

// train.remat: every layer's views but x become those of layer 0 (what all layers
// have) and of the first layer of its kind (MoE or dense).
void Model::share_layer_views() {
  const LayerActs& common = acts_[0];
  for (int64_t l = 1; l < cfg_.n_layers; l++) {
    LayerActs& a = acts_[l];
    const LayerActs& kind = acts_[cfg_.is_moe_layer(l) ? 0 : (cfg_.n_experts > 0 ? 1 : 0)];
    a.xn1 = common.xn1; a.rstd1 = common.rstd1;
    a.q = common.q; a.k = common.k; a.v = common.v;
    a.att_state = common.att_state; a.att = common.att;
    a.x_mid = common.x_mid; a.xn2 = common.xn2; a.rstd2 = common.rstd2;
    if (&kind == &a) continue;  // the first dense layer: its own a0, a1, h
    a.xn2_f32 = kind.xn2_f32;
    a.router_logits = kind.router_logits; a.route = kind.route; a.ein = kind.ein; a.eout = kind.eout;
    a.a0 = kind.a0; a.a1 = kind.a1; a.h = kind.h;
  }
}

// The rows a rank receives for its experts depend on the other ranks' batches
// (their sizes may differ, e.g. in evaluation): the expert buffers of a layer have
// their own arena, sized for the bound above and grown when an exchange plan
// asks for more, before anything is written to them.
// xout, the experts' outputs, lives only until they are sent back: one buffer for
// every MoE layer, as large as the most rows any layer received.
void Model::size_expert_rows(int64_t layer, int64_t n) {
  size_expert_out(layer, n);
  const int64_t l = shared_acts_ ? 0 : layer;  // remat: one set of expert rows for every MoE layer
  LayerActs& a = acts_[l];
  if (expert_arenas_.size() != acts_.size()) expert_arenas_.resize(acts_.size());
  std::unique_ptr<Arena>& ar = expert_arenas_[l];
  if (ar && a.xin.ndim > 0 && a.xin.shape[0] >= n) {
    if (shared_acts_) acts_[layer].xin = a.xin, acts_[layer].pre = a.pre, acts_[layer].eh = a.eh;
    return;
  }
  if (!ar) ar = std::make_unique<Arena>(*be_);
  const int64_t M = cfg_.d_model, H = H_;
  ar->clear();
  ar->add(a.xin, lname(l, "xin"), DType::f32, {n, M});
  ar->add(a.pre, lname(l, "pre"), DType::f32, {n, H});
  ar->add(a.eh, lname(l, "eh"), be_->gemm_dtype(), {n, H});
  ar->commit();
  if (!shared_acts_) return;
  for (int64_t k = 1; k < cfg_.n_layers; k++)
    if (cfg_.is_moe_layer(k)) {
      acts_[k].xin = a.xin; acts_[k].pre = a.pre; acts_[k].eh = a.eh;
    }
}

void Model::size_expert_out(int64_t layer, int64_t n) {
  if (!expert_out_ || expert_out_rows_ < n) {
    if (!expert_out_) expert_out_ = std::make_unique<Arena>(*be_);
    expert_out_->clear();
    expert_out_->add(xout_, "xout", DType::f32, {n, cfg_.d_model});
    expert_out_->commit();
    expert_out_rows_ = n;
  }
  acts_[layer].xout = xout_;
}

void Model::size_expert_grads(int64_t n) {
  GradActs& d = grads_;
  if (expert_grads_ && d.dxin.ndim > 0 && d.dxin.shape[0] >= n) return;
  if (!expert_grads_) expert_grads_ = std::make_unique<Arena>(*be_);
  const int64_t M = cfg_.d_model;
  expert_grads_->clear();
  expert_grads_->add(d.dxout, "d/xout", DType::f32, {n, M});
  expert_grads_->add(d.dxin, "d/xin", DType::f32, {n, M});
  expert_grads_->add(d.dscratch, "d/expert_hidden", DType::f32, {n, H_});
  expert_grads_->commit();
}

void Model::upload_batch(const std::vector<int32_t>& ids, const std::vector<int32_t>* targets,
                         const std::vector<int32_t>* segments) {
  GLAM_ASSERT(static_cast<int64_t>(ids.size()) == T_);
  be_->upload(ids_, ids.data());
  if (targets) {
    targets_host_ = *targets;
    be_->upload(targets_, targets_host_.data());
  }
  if (segments) be_->upload(segments_, segments->data());
}

void Model::fetch_outputs() const {
  if (!host_outputs_stale_) return;
  logits_host_.resize(T_ * V_);
  lse_host_.resize(T_);
  be_->download(logits_host_.data(), logits_);
  if (have_targets_) be_->download(lse_host_.data(), lse_);
  host_outputs_stale_ = false;
}

const std::vector<float>& Model::logits() const {
  fetch_outputs();
  return logits_host_;
}

size_t Model::activation_bytes() const {
  size_t n = acts_arena_->bytes() + (expert_grads_ ? expert_grads_->bytes() : 0);
  for (const auto& a : expert_arenas_) n += a ? a->bytes() : 0;
  if (expert_out_) n += expert_out_->bytes();
  return n;
}

void Model::zero_grad() { be_->zero_grads(); }

void Model::finish_phases() { be_->collect_phases(timers, true); }

double Model::grad_norm() {
  double norm = 0.0;
  {
    BackendPhase phase(*be_, "optimizer");
    norm = be_->grad_norm(params_);
  }
  be_->collect_phases(timers, false);
  return norm;
}

void Model::optimizer_step(Adafactor& opt, double lr, int64_t t) {
  {
    BackendPhase phase(*be_, "optimizer");
    be_->optimizer_step(params_, opt, lr, t);
  }
  be_->collect_phases(timers, false);
}

void Model::sync_to_host(Adafactor* opt) { be_->params_to_host(params_, opt); }

void Model::sync_to_device(const Adafactor* opt) { be_->params_to_device(params_, opt); }

void Model::grads_to_host() { be_->grads_to_host(params_); }

// ---- KV cache -------------------------------------------------------------------

void KVCache::reset(int64_t B, int64_t cap, int64_t L, int64_t w) {
  if (B != rows || cap != max_positions || L != n_layers || w != width) arena.reset();
  rows = B; max_positions = cap; len = 0; width = w; n_layers = L;
}

void KVCache::reorder(const std::vector<int64_t>& parent) {
  GLAM_ASSERT(backend != nullptr && static_cast<int64_t>(parent.size()) == rows);
  for (auto* layers : {&k, &v})
    for (Tensor& t : *layers) {
      backend->copy(scratch, t);
      for (int64_t r = 0; r < rows; r++) backend->copy(t.rows(r, 1), scratch.rows(parent[r], 1));
    }
}

void Model::ensure_cache(KVCache& cache) {
  GLAM_REQUIRE(cache.n_layers == cfg_.n_layers && cache.width == nh_ * cfg_.d_head,
               "KV cache shaped for another model");
  if (cache.arena && cache.backend == be_.get()) return;
  cache.backend = be_.get();
  cache.arena = std::make_shared<Arena>(*be_);
  cache.k.assign(cache.n_layers, Tensor{});
  cache.v.assign(cache.n_layers, Tensor{});
  const std::vector<int64_t> shape = {cache.rows, cache.max_positions, cache.width};
  for (int64_t l = 0; l < cache.n_layers; l++) {
    cache.arena->add(cache.k[l], lname(l, "kv_cache/k"), DType::f32, shape);
    cache.arena->add(cache.v[l], lname(l, "kv_cache/v"), DType::f32, shape);
  }
  cache.arena->add(cache.scratch, "kv_cache/scratch", DType::f32, shape);
  cache.arena->commit();
}

}  // namespace glam
