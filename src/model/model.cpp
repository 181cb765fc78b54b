// GLaM forward and backward on this rank's shard. Conventions: T = B*S tokens of
// this rank's rows, M = d_model, A = local heads * d_head, H = local hidden.
// Tensor-parallel reductions (model axis) sit right after the row-parallel
// matmuls (attention Wo, FFN Wo, expert Wo) and after the input gradients of the
// column-parallel ones; each layer's backward does its own, so a replicated path
// (the router) is never summed twice.
#include "glam/model/model.h"

#include <cmath>
#include <cstdio>

#include "glam/model/adafactor.h"
#include "glam/model/moe_chunks.h"
#include "glam/base/check.h"

namespace glam {

cpu::RouterOptions router_options(const ModelConfig& cfg, const Mesh& mesh, uint64_t seed, int64_t step,
                                  int64_t layer, int64_t T, bool no_drop, int64_t step_T, int64_t first_t) {
  if (step_T == 0) step_T = T;
  cpu::RouterOptions opt;
  opt.n_experts = cfg.n_experts;
  opt.group_size = cfg.group_size;
  opt.capacity_factor = cfg.capacity_factor;
  opt.second = cfg.second_policy == "random" ? cpu::SecondPolicy::random : cpu::SecondPolicy::all;
  opt.no_drop = no_drop;
  opt.n_groups_global = no_drop ? 0 : step_T * mesh.data_size / cfg.group_size;
  opt.seed = seed ^ (0x51ed270b27f0a5c3ULL * static_cast<uint64_t>(step * 1024 + layer + 1));
  opt.token_offset = step_T * mesh.data_rank + first_t;
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

// ---- forward -------------------------------------------------------------------

LossParts Model::forward(const Batch& batch, bool no_drop, bool frozen) {
  const int64_t M = cfg_.d_model, L = cfg_.n_layers;
  for (int32_t id : batch.ids)
    GLAM_REQUIRE(id >= 0 && id < cfg_.vocab_size, "token id ", id, " outside the vocabulary [0, ",
                 cfg_.vocab_size, ")");
  GLAM_REQUIRE(!frozen || device_ == Device::cpu, "frozen routing (finite-difference tests) runs on the CPU only");
  plan_buffers(batch.rows, batch.seq_len, no_drop, /*decode=*/false);
  have_targets_ = true;
  parts_ = LossParts{};
  upload_batch(batch.ids, &batch.targets, &batch.segments);

  be_->gather_weights(params_, outer_params_, 0);
  be_->embedding_forward(acts_[0].x, ids_, w32(p_emb_), T_, M, v0_, V_);
  be_->allreduce_sum_model(acts_[0].x);
  GLAM_REQUIRE(!frozen || !shared_acts_, "frozen routing (finite-difference tests) needs train.remat false");
  for (int64_t l = 0; l < L; l++) {
    LayerActs& a = acts_[l];
    Tensor ffn_out = grads_.dffn;  // [T, M] scratch until the backward
    gather_layer_weights(l, l + 1);
    layer_forward(l, ffn_out, no_drop, frozen, /*recompute=*/false);
    Tensor next = l + 1 < L ? acts_[l + 1].x : x_final;
    be_->copy(next, a.x_mid);
    be_->add_into(next, ffn_out);
  }
  {
    BackendPhase phase(*be_, "output");
    output_forward(x_final);
    const cpu::LossSums sums = be_->softmax_xent_forward(lse_, logits_, targets_, T_, V_, v0_);
    add_output_loss(parts_, sums, cfg_, mesh_);
  }
  be_->collect_phases(timers, false);
  return parts_;
}

// Once in the first forward; then, while the windows still hold layers 0 and 1
// (after a backward) or L-2 and L-1 (after a forward), each later micro-step's
// forward gathers layers 2.. and each backward layers ..L-3.
int64_t layer_weight_gathers(int64_t l, int64_t L, int64_t micro_steps) {
  return 1 + (l >= 2 ? micro_steps - 1 : 0) + (l <= L - 3 ? micro_steps : 0);
}

// train.shard_weights: layer l's weights (waited for at their first use) and the
// next layer's, gathered while layer l computes. No-ops without it.
void Model::gather_layer_weights(int64_t l, int64_t next) {
  be_->gather_weights(params_, layer_params_[l], 1 + static_cast<int>(l % 2));
  if (next >= 0 && next < cfg_.n_layers)
    be_->gather_weights(params_, layer_params_[next], 1 + static_cast<int>(next % 2));
}

// Layer l from its input acts_[l].x: x_mid, then the FFN (dense or MoE) of
// RMSNorm(x_mid) into ffn_out. recompute (train.remat, in the backward): the same
// again, the routing statistics not counted twice.
void Model::layer_forward(int64_t l, Tensor ffn_out, bool no_drop, bool frozen, bool recompute) {
  LayerActs& a = acts_[l];
  {
    BackendPhase phase(*be_, "attention");
    attention_forward(l, a.x);
  }
  be_->rmsnorm_forward(a.xn2, a.rstd2, a.x_mid, w32(pid(l, "ffn/norm_scale")), T_, cfg_.d_model, a.xn2_f32);
  if (cfg_.is_moe_layer(l)) {
    moe_forward(l, ffn_out, no_drop, frozen, recompute);
  } else {
    BackendPhase phase(*be_, "dense_ffn");
    dense_forward(l, ffn_out);
  }
}

// x_mid = x + Wo attention(Wq xn1, Wk xn1, Wv xn1), xn1 = RMSNorm(x).
void Model::attention_forward(int64_t l, const Tensor& x) {
  const int64_t M = cfg_.d_model, dh = cfg_.d_head, A = nh_ * dh;
  LayerActs& a = acts_[l];
  be_->rmsnorm_forward(a.xn1, a.rstd1, x, w32(pid(l, "attn/norm_scale")), T_, M, Tensor{});
  be_->matmul_forward(a.q, a.xn1, w(pid(l, "attn/wq")), T_, M, A);
  be_->matmul_forward(a.k, a.xn1, w(pid(l, "attn/wk")), T_, M, A);
  be_->matmul_forward(a.v, a.xn1, w(pid(l, "attn/wv")), T_, M, A);
  be_->attention_forward(a.att, a.att_state, a.q, a.k, a.v, w32(pid(l, "attn/rel_bias")), segments_, B_, S_, nh_,
                         dh);
  be_->matmul_forward(a.x_mid, a.att, w(pid(l, "attn/wo")), T_, A, M);
  be_->allreduce_sum_model(a.x_mid);
  be_->add_into(a.x_mid, x);
}

void Model::dense_forward(int64_t l, Tensor out) {
  const int64_t M = cfg_.d_model;
  LayerActs& a = acts_[l];
  be_->matmul_forward(a.a0, a.xn2, w(pid(l, "ffn/wi0")), T_, M, H_);
  be_->matmul_forward(a.a1, a.xn2, w(pid(l, "ffn/wi1")), T_, M, H_);
  be_->geglu_forward(a.h, a.a0, a.a1, T_ * H_);
  be_->matmul_forward(out, a.h, w(pid(l, "ffn/wo")), T_, H_, M);
  be_->allreduce_sum_model(out);
}

void Model::moe_forward(int64_t l, Tensor out, bool no_drop, bool frozen, bool recompute) {
  const int64_t M = cfg_.d_model, E = cfg_.n_experts;
  LayerActs& a = acts_[l];
  {  // route
    BackendPhase phase(*be_, "router");
    be_->matmul_fp32_forward(a.router_logits, a.xn2_f32, w32(pid(l, "moe/router")), T_, M, E);
    const cpu::RouterOptions opt =
        router_options(cfg_, mesh_, seed_, step_, l, T_, no_drop, micro_.step_rows * S_, micro_.first_row * S_);
    if (frozen) {
      const Routing previous = a.route;
      be_->route(a.route, a.router_logits, T_, opt, &previous);
    } else {
      be_->route(a.route, a.router_logits, T_, opt, nullptr);
    }
  }
  const int64_t rows = a.route.plan.expert_offset[E];
  GLAM_ASSERT(rows <= rows_max_);
  {  // dispatch: router order -> rows of this rank's experts
    BackendPhase phase(*be_, "dispatch");
    be_->dispatch_forward(a.ein.rows(0, rows), a.xn2, a.route, M);
    a.xplan = plan_exchange(a.route.plan, place_, mesh_);
    size_expert_rows(l, a.xplan.n_recv());
    if (exchange_chunks_ == 1) be_->send_to_experts(a.xin.rows(0, a.xplan.n_recv()), a.ein.rows(0, rows), a.xplan, M);
  }
  const int64_t n = a.xplan.n_recv();
  if (exchange_chunks_ > 1) {  // send, experts and return in chunks that overlap (moe_chunks.h)
    BackendPhase phase(*be_, "experts");
    ChunkedExchange cx = plan_chunks(a.xplan, a.route.plan, place_, mesh_.data_rank, exchange_chunks_);
    experts_forward_chunked(*be_, cx, a.eout.rows(0, rows), a.xin.rows(0, n), a.pre.rows(0, n), a.eh.rows(0, n),
                            a.xout.rows(0, n), a.ein.rows(0, rows), w(pid(l, "moe/wi")), w(pid(l, "moe/wo")), M, H_,
                            expert_act());
  } else {  // experts (hidden dim split over model: sum the partial outputs)
    BackendPhase phase(*be_, "experts");
    be_->experts_forward(a.xout.rows(0, n), a.pre.rows(0, n), a.eh.rows(0, n), a.xin.rows(0, n),
                         w(pid(l, "moe/wi")), w(pid(l, "moe/wo")), a.xplan.local_offsets, M, H_, expert_act());
    be_->allreduce_sum_model(a.xout.rows(0, n));
  }
  {  // combine: back to router order, then weight and sum the two choices
    BackendPhase phase(*be_, "combine");
    if (exchange_chunks_ == 1) be_->return_from_experts(a.eout.rows(0, rows), a.xout.rows(0, n), a.xplan, M);
    be_->combine_forward(out, a.eout.rows(0, rows), a.route, M);
  }
  if (!recompute) add_routing_statistics(parts_, a.route.plan, T_, mesh_);
}

// logits [T, Vl] = (RMSNorm(x) * M^-1/2) @ Emb^T (the tied embedding).
void Model::output_forward(const Tensor& x) {
  const int64_t M = cfg_.d_model;
  be_->rmsnorm_forward(xnf, rstdf, x, w32(p_final_), T_, M, Tensor{});
  be_->logits_forward(logits_, xnf, w(p_emb_), T_, M, V_, 1.0f / std::sqrt(static_cast<float>(M)));
  host_outputs_stale_ = true;
}

// ---- inference with a KV cache -----------------------------------------------

void Model::forward_cached(KVCache& cache, const std::vector<int32_t>& ids, int64_t n) {
  const int64_t M = cfg_.d_model, L = cfg_.n_layers;
  GLAM_REQUIRE(cache.len + n <= cache.max_positions, "KV cache holds ", cache.max_positions, " positions; ", cache.len + n, " asked");
  plan_buffers(cache.rows, n, /*no_drop=*/true, /*decode=*/true);
  ensure_cache(cache);
  have_targets_ = false;
  parts_ = LossParts{};
  upload_batch(ids, nullptr, nullptr);
  be_->gather_weights(params_, outer_params_, 0);
  be_->embedding_forward(acts_[0].x, ids_, w32(p_emb_), T_, M, v0_, V_);
  be_->allreduce_sum_model(acts_[0].x);
  for (int64_t l = 0; l < L; l++) {
    LayerActs& a = acts_[l];
    gather_layer_weights(l, l + 1);
    decode_attention(l, a.x, cache, n);
    be_->rmsnorm_forward(a.xn2, a.rstd2, a.x_mid, w32(pid(l, "ffn/norm_scale")), T_, M, a.xn2_f32);
    Tensor ffn_out = grads_.dffn;
    if (cfg_.is_moe_layer(l)) moe_forward(l, ffn_out, /*no_drop=*/true, false, false);
    else dense_forward(l, ffn_out);
    Tensor next = l + 1 < L ? acts_[l + 1].x : x_final;
    be_->copy(next, a.x_mid);
    be_->add_into(next, ffn_out);
  }
  cache.len += n;
  output_forward(x_final);
  be_->collect_phases(timers, false);
}

// attention_forward over the cache: the new keys and values are appended first.
void Model::decode_attention(int64_t l, const Tensor& x, KVCache& cache, int64_t n) {
  const int64_t M = cfg_.d_model, dh = cfg_.d_head, A = nh_ * dh, B = cache.rows;
  LayerActs& a = acts_[l];
  be_->rmsnorm_forward(a.xn1, a.rstd1, x, w32(pid(l, "attn/norm_scale")), T_, M, Tensor{});
  be_->matmul_forward(a.q, a.xn1, w(pid(l, "attn/wq")), T_, M, A);
  be_->matmul_forward(a.k, a.xn1, w(pid(l, "attn/wk")), T_, M, A);
  be_->matmul_forward(a.v, a.xn1, w(pid(l, "attn/wv")), T_, M, A);
  be_->kv_append(cache.k[l], a.k, B, n, cache.len, cache.max_positions, A);
  be_->kv_append(cache.v[l], a.v, B, n, cache.len, cache.max_positions, A);
  be_->attention_decode(a.att, a.q, cache.k[l], cache.v[l], w32(pid(l, "attn/rel_bias")), B, n, cache.len,
                        cache.max_positions, nh_, dh);
  be_->matmul_forward(a.x_mid, a.att, w(pid(l, "attn/wo")), T_, A, M);
  be_->allreduce_sum_model(a.x_mid);
  be_->add_into(a.x_mid, x);
}

std::vector<double> Model::target_logprobs() const {
  GLAM_ASSERT(have_targets_);
  fetch_outputs();
  std::vector<float> target_logit(T_, 0.0f);
  for (int64_t t = 0; t < T_; t++) {
    const int64_t c = targets_host_[t] - v0_;
    if (targets_host_[t] >= 0 && c >= 0 && c < V_) target_logit[t] = logits_host_[t * V_ + c];
  }
  mesh_.allreduce_sum_model(target_logit.data(), T_);
  std::vector<double> lp(T_, 0.0);
  for (int64_t t = 0; t < T_; t++)
    if (targets_host_[t] >= 0) lp[t] = static_cast<double>(target_logit[t]) - lse_host_[t];
  return lp;
}

// ---- backward ------------------------------------------------------------------

void Model::backward() {
  const int64_t M = cfg_.d_model, L = cfg_.n_layers;
  GLAM_ASSERT(have_targets_);
  GradActs& d = grads_;
  const std::vector<size_t>& outer = outer_params_;  // their gradients build up over the whole backward
  be_->open_grads(params_, outer, 0);
  be_->zero(d.dx);
  {
    BackendPhase phase(*be_, "output");
    output_backward();
  }
  for (int64_t l = L - 1; l >= 0; l--) {
    LayerActs& a = acts_[l];
    be_->open_grads(params_, layer_params_[l], 1);
    gather_layer_weights(l, l - 1);
    // train.remat: the shared activations hold the last layer's; recompute the others'
    if (shared_acts_ && l < L - 1) layer_forward(l, grads_.dffn, planned_no_drop_, false, /*recompute=*/true);
    be_->zero(d.dxn);
    if (cfg_.is_moe_layer(l)) {
      moe_backward(l, d.dx);
    } else {
      BackendPhase phase(*be_, "dense_ffn");
      dense_backward(l, d.dx);
    }
    const size_t g2 = pid(l, "ffn/norm_scale");
    be_->rmsnorm_backward(d.dx, g(g2), d.dxn, a.x_mid, w32(g2), a.rstd2, T_, M);
    {
      BackendPhase phase(*be_, "attention");
      attention_backward(l);
    }
    BackendPhase phase(*be_, "grad_reduce");
    be_->close_grads(params_, layer_params_[l]);  // train.shard_state: this layer's, reduce-scattered now
  }
  be_->embedding_backward(g(p_emb_), d.dx, ids_, T_, M, v0_, V_);
  be_->close_grads(params_, outer);
  if (micro_.last(B_)) {
    BackendPhase phase(*be_, "grad_reduce");
    be_->reduce_gradients(params_, place_);
  }
  be_->collect_phases(timers, false);
}

// dx: d x_final on exit (the loss through the logits and the final norm).
void Model::output_backward() {
  const int64_t M = cfg_.d_model;
  GradActs& d = grads_;
  const double n = std::max<int64_t>(1, micro_.step_rows > 0 ? micro_.n_targets : parts_.n_targets);
  be_->softmax_xent_backward(d.dlogits, logits_, lse_, targets_, T_, V_, v0_, static_cast<float>(1.0 / n),
                             static_cast<float>(cfg_.z_loss_weight / n));
  be_->zero(d.dxn);
  be_->logits_backward(d.dxn, g(p_emb_), d.dlogits, xnf, w(p_emb_), T_, M, V_, 1.0f / std::sqrt(static_cast<float>(M)));
  be_->allreduce_sum_model(d.dxn);
  be_->rmsnorm_backward(d.dx, g(p_final_), d.dxn, x_final, w32(p_final_), rstdf, T_, M);
}

// grads_.dx holds d x_mid on entry and d x on exit (residual plus the normed path).
void Model::attention_backward(int64_t l) {
  const int64_t M = cfg_.d_model, dh = cfg_.d_head, A = nh_ * dh;
  LayerActs& a = acts_[l];
  GradActs& d = grads_;
  const size_t wq = pid(l, "attn/wq"), wk = pid(l, "attn/wk"), wv = pid(l, "attn/wv"), wo = pid(l, "attn/wo");
  const size_t rb = pid(l, "attn/rel_bias"), g1 = pid(l, "attn/norm_scale");
  be_->zero(d.datt); be_->zero(d.dq); be_->zero(d.dk); be_->zero(d.dv);
  be_->matmul_backward(d.datt, g(wo), d.dx, a.att, w(wo), T_, A, M);
  be_->attention_backward(d.dq, d.dk, d.dv, g(rb), d.datt, a.att_state, a.att, a.q, a.k, a.v, w32(rb), segments_,
                          B_, S_, nh_, dh);
  be_->zero(d.dxn);
  be_->matmul_backward(d.dxn, g(wq), d.dq, a.xn1, w(wq), T_, M, A);
  be_->matmul_backward(d.dxn, g(wk), d.dk, a.xn1, w(wk), T_, M, A);
  be_->matmul_backward(d.dxn, g(wv), d.dv, a.xn1, w(wv), T_, M, A);
  be_->allreduce_sum_model(d.dxn);
  be_->rmsnorm_backward(d.dx, g(g1), d.dxn, a.x, w32(g1), a.rstd1, T_, M);
}

// Accumulates d xn2 into grads_.dxn from dout = d FFN output.
void Model::dense_backward(int64_t l, const Tensor& dout) {
  const int64_t M = cfg_.d_model;
  LayerActs& a = acts_[l];
  GradActs& d = grads_;
  const size_t wi0 = pid(l, "ffn/wi0"), wi1 = pid(l, "ffn/wi1"), wo = pid(l, "ffn/wo");
  be_->zero(d.dh); be_->zero(d.da0); be_->zero(d.da1);
  be_->matmul_backward(d.dh, g(wo), dout, a.h, w(wo), T_, H_, M);
  be_->geglu_backward(d.da0, d.da1, d.dh, a.a0, a.a1, T_ * H_);
  be_->matmul_backward(d.dxn, g(wi0), d.da0, a.xn2, w(wi0), T_, M, H_);
  be_->matmul_backward(d.dxn, g(wi1), d.da1, a.xn2, w(wi1), T_, M, H_);
  be_->allreduce_sum_model(d.dxn);
}

void Model::moe_backward(int64_t l, const Tensor& dout) {
  const int64_t M = cfg_.d_model, E = cfg_.n_experts;
  LayerActs& a = acts_[l];
  GradActs& d = grads_;
  const int64_t rows = a.route.plan.expert_offset[E], n = a.xplan.n_recv();
  const size_t wi = pid(l, "moe/wi"), wo = pid(l, "moe/wo"), wg = pid(l, "moe/router");
  size_expert_grads(n);
  {  // combine backward: gradients of the expert outputs and of the combine weights
    BackendPhase phase(*be_, "combine");
    be_->combine_backward(d.deout.rows(0, rows), d.dweight, dout, a.eout.rows(0, rows), a.route, M);
    if (exchange_chunks_ == 1) be_->send_to_experts(d.dxout.rows(0, n), d.deout.rows(0, rows), a.xplan, M);
  }
  if (exchange_chunks_ > 1) {  // send, experts backward and return in chunks that overlap (moe_chunks.h)
    BackendPhase phase(*be_, "experts");
    ChunkedExchange cx = plan_chunks(a.xplan, a.route.plan, place_, mesh_.data_rank, exchange_chunks_);
    experts_backward_chunked(*be_, cx, d.dein.rows(0, rows), g(wi), g(wo), d.dxin.rows(0, n), d.dxout.rows(0, n),
                             d.dscratch.rows(0, n), d.deout.rows(0, rows), a.xin.rows(0, n), a.pre.rows(0, n),
                             a.eh.rows(0, n), w(wi), w(wo), M, H_, expert_act());
  } else {  // experts backward (hidden dim split over model: sum the input gradient)
    BackendPhase phase(*be_, "experts");
    be_->zero(d.dxin.rows(0, n));
    be_->experts_backward(d.dxin.rows(0, n), g(wi), g(wo), d.dscratch.rows(0, n), d.dxout.rows(0, n),
                          a.xin.rows(0, n), a.pre.rows(0, n), a.eh.rows(0, n), w(wi), w(wo), a.xplan.local_offsets, M,
                          H_, expert_act());
    be_->allreduce_sum_model(d.dxin.rows(0, n));
  }
  {  // dispatch backward
    BackendPhase phase(*be_, "dispatch");
    if (exchange_chunks_ == 1) be_->return_from_experts(d.dein.rows(0, rows), d.dxin.rows(0, n), a.xplan, M);
    be_->dispatch_backward(d.dxn, d.dein.rows(0, rows), a.route, M);
  }
  BackendPhase phase(*be_, "router");  // replicated over model: no reduction
  be_->zero(d.drouter);
  be_->router_backward(d.drouter, d.dweight, cfg_.aux_loss_weight, a.route);
  be_->matmul_fp32_backward(d.dxn, g(wg), d.drouter, a.xn2_f32, w32(wg), T_, M, E);
}

}  // namespace glam
