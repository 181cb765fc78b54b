// The resource plan (see plan.h): parameter counts from the parameter table,
// FLOPs from the matmuls model.cpp calls, memory from the buffers of model.h and
// the Adafactor state, communication from the collectives of model.cpp and
// expert_exchange.cpp, on a mesh that exists only as its two sizes.
#include "glam/plan/plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "glam/model/adafactor.h"
#include "glam/model/model.h"
#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/mesh/mesh.h"
#include "glam/model/params.h"

namespace glam {

void parse_mesh_shape(const std::string& shape, const std::string& flag, int* data, int* model) {
  parse_mesh(shape, flag, data, model);
}

int64_t parse_bytes(const std::string& text, const std::string& flag) {
  struct Unit { const char* name; double factor; };
  static const Unit units[] = {{"", 1.0},          {"B", 1.0},          {"KB", 1e3},
                               {"MB", 1e6},        {"GB", 1e9},         {"TB", 1e12},
                               {"KiB", 1024.0},    {"MiB", 1048576.0},  {"GiB", 1073741824.0},
                               {"TiB", 1099511627776.0}};
  double value = 0.0;
  int used = 0;
  const bool number = !text.empty() && (std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '.') &&
                      std::sscanf(text.c_str(), "%lf%n", &value, &used) == 1 && std::isfinite(value) && value > 0;
  if (number) {
    const std::string unit = text.substr(used);
    for (const Unit& u : units) {
      if (unit != u.name) continue;
      // 2^60 bytes (1 EiB) keeps the sums of plan.cpp inside int64
      GLAM_REQUIRE(value * u.factor >= 1 && value * u.factor <= 0x1p60, flag, ": ", text,
                   " is outside 1 B to 1 EiB (2^60 bytes)");
      return static_cast<int64_t>(value * u.factor);
    }
  }
  throw UserError(msg(flag, ": expected a positive size with a unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB ",
                      "(e.g. 80GiB), got '", text, "'"));
}

std::string format_bytes(double bytes) {
  static const char* names[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (std::fabs(bytes) >= 1024.0 && i < 5) { bytes /= 1024.0; i++; }
  char buf[32];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f %s" : "%.2f %s", bytes, names[i]);
  return buf;
}

namespace {

// Forward FLOPs of one rank per step: the GEMMs of model.cpp (attention scores and
// P V over all S x S positions, as the CPU code computes them). T tokens in T/S rows,
// `routed` rows reach this rank's experts; A, H, V are this rank's shares.
double forward_flops(const ModelConfig& c, double T, double routed, double A, double H, double V) {
  const double M = static_cast<double>(c.d_model), S = static_cast<double>(c.seq_len);
  const double n_moe = static_cast<double>(c.n_moe_layers()), n_dense = static_cast<double>(c.n_layers) - n_moe;
  const double attention = c.n_layers * (4 * 2 * T * M * A + 4 * (T / S) * S * S * A);
  const double dense = n_dense * 3 * 2 * T * M * H;
  const double moe = n_moe * (2 * T * M * c.n_experts + 2 * 2 * routed * M * H);
  const double logits = 2 * T * M * V;
  return attention + dense + moe + logits;
}

// Elements forward keeps for backward, plus the output's transients (logits, their
// gradient, the residual gradient): the LayerActs fields of model.h. remat: every
// layer keeps its input x; the rest is held once (layer 0's set, and one set of
// the MoE and of the dense layers' own buffers), as Model::share_layer_views.
int64_t activation_elements(const ModelConfig& c, int64_t T, int64_t routed, int64_t A, int64_t nh,
                            int64_t H, int64_t V, bool remat) {
  const int64_t M = c.d_model, S = c.seq_len;
  int64_t n = 0;
  bool moe_held = false, dense_held = false;
  for (int64_t l = 0; l < c.n_layers; l++) {
    n += T * M;                  // x [T, M]
    const bool moe = c.is_moe_layer(l);
    if (!remat || l == 0) {
      n += 3 * T * M + 2 * T;      // xn1, x_mid, xn2 [T, M]; rstd1, rstd2 [T]
      n += 4 * T * A;              // q, k, v, att [T, A]
      n += (T / S) * nh * S * 2;   // softmax stats [B, nh, S, 2] (cpu; the GPU's flash lse is half)
    }
    if (remat && (moe ? moe_held : dense_held)) continue;
    (moe ? moe_held : dense_held) = true;
    if (moe) n += T * c.n_experts + 2 * routed * H;  // router_logits; pre, eh [n_recv, H]
    else n += 3 * T * H;         // a0, a1, h [T, H]
  }
  n += 2 * T * M + 2 * T;        // x_final, xnf [T, M]; rstdf, lse [T]
  n += 2 * T * V + 2 * T * M;    // logits and dlogits [T, V]; dxnf, dx [T, M]
  return n;
}

// What one rank holds and moves for the tensors replicated over data when
// train.shard_state splits them over D data ranks (D = 1: not split). Elements:
struct ShardedState {
  bool sharded = false;
  int64_t weights = 0;     // Param::w; train.shard_weights: the split ones' rows, plus the three windows
  int64_t gradients = 0;   // Param::g of every tensor, plus open_grads' three whole-tensor windows
  int64_t state = 0;       // Adafactor statistics
  int64_t allreduced = 0;  // gradients all-reduced over data (not split)
  int64_t scattered = 0;   // gradients reduce-scattered over data, per micro-step
  int64_t gathered = 0;    // this rank's rows of the weights all-gathered per step (data rank 0's, the most)
  int64_t gathered_first = 0;  // ... of them, the embedding's, final norm's and layer 0's first (exposed)
  int64_t gather_calls = 0;    // all-gathers per step
};

// The windows of one kind: [0] the embedding and final norm, [1] and [2] the
// layers of even and odd index in turn, each as large as its largest layer.
int64_t three_windows(const std::vector<int64_t>& layer, int64_t outer) {
  int64_t even = 0, odd = 0;
  for (size_t l = 0; l < layer.size(); l++) (l % 2 ? odd : even) = std::max(l % 2 ? odd : even, layer[l]);
  return outer + even + odd;
}

ShardedState sharded_state(const ModelConfig& c, const ParamTable& table, int64_t D, bool weights,
                           int64_t micro_steps, const AdafactorOptions& ada) {
  ShardedState s;
  s.sharded = D > 1;
  int64_t outer_window = 0, outer_rows = 0, outer_tensors = 0;
  std::vector<int64_t> window(c.n_layers, 0), rows_of(c.n_layers, 0), tensors(c.n_layers, 0);
  for (const Param& q : table.params) {
    const bool split = D > 1 && q.data_axis < 0 && q.shape.size() <= 2;
    if (!split) {
      s.weights += q.size();
      s.gradients += q.size();
      s.state += adafactor_state_size(q, ada);
      if (q.data_axis < 0) s.allreduced += q.size();
      continue;
    }
    int64_t first = 0, rows = 0;
    zero_rows_of(q.shape[0], static_cast<int>(D), 0, first, rows);  // rank 0 has the most rows
    s.weights += weights ? rows * q.row_size() : q.size();
    s.gradients += rows * q.row_size();
    s.scattered += q.size();
    s.state += adafactor_factored(q, ada) ? rows + q.shape[1] : rows * q.row_size();
    long long l = -1;
    if (std::sscanf(q.name.c_str(), "layer_%lld/", &l) == 1) {
      window[l] += q.size();
      rows_of[l] += rows * q.row_size();
      tensors[l]++;
    } else {
      outer_window += q.size();
      outer_rows += rows * q.row_size();
      outer_tensors++;
    }
  }
  s.gradients += three_windows(window, outer_window);
  if (!weights) {  // all-gathered once, after the update
    for (int64_t l = 0; l < c.n_layers; l++) { s.gathered += rows_of[l]; s.gather_calls += tensors[l]; }
    s.gathered += outer_rows;
    s.gather_calls += outer_tensors;
    return s;
  }
  s.weights += three_windows(window, outer_window);
  s.gathered = s.gathered_first = outer_rows + (c.n_layers > 0 ? rows_of[0] : 0);
  s.gather_calls = outer_tensors;
  for (int64_t l = 0; l < c.n_layers; l++) {
    const int64_t n = layer_weight_gathers(l, c.n_layers, micro_steps);
    s.gathered += (l == 0 ? n - 1 : n) * rows_of[l];
    s.gather_calls += n * tensors[l];
  }
  return s;
}

}  // namespace

Plan make_plan(const Config& cfg, const PlanOptions& opt) {
  const ModelConfig& c = cfg.model;
  Plan p;
  p.config = cfg.source;
  p.data = opt.data;
  p.model = opt.model;
  const int64_t D = opt.data, Mm = opt.model;
  p.tokens_per_step = opt.batch_tokens > 0 ? opt.batch_tokens : cfg.train.batch_rows * c.seq_len;
  GLAM_REQUIRE(p.tokens_per_step % c.seq_len == 0, "--batch-tokens ", p.tokens_per_step,
               " must be a multiple of model.seq_len ", c.seq_len);
  const int64_t rows = p.tokens_per_step / c.seq_len;
  GLAM_REQUIRE(rows % D == 0, "the batch of ", rows, " rows of ", c.seq_len, " tokens must split over the ", D,
               " data ranks of mesh ", D, "x", Mm, " (train.batch_rows or --batch-tokens)");
  const int64_t T = p.tokens_per_step / D;
  GLAM_REQUIRE(c.n_experts == 0 || T % c.group_size == 0, "model.group_size ", c.group_size,
               " must divide the tokens of each data rank (", T, " on mesh ", D, "x", Mm, ")");
  p.tokens_per_rank = T;
  p.n_layers = c.n_layers;
  const int64_t micro_rows = cfg.train.micro_rows, rank_rows = T / c.seq_len;
  GLAM_REQUIRE(micro_rows == 0 || rank_rows % micro_rows == 0, "train.micro_rows ", micro_rows,
               " must divide the rows each data rank has in a step (", rank_rows, " on mesh ", D, "x", Mm, ")");
  p.micro_steps = micro_rows > 0 ? rank_rows / micro_rows : 1;
  const int64_t Tm = T / p.micro_steps;  // tokens per micro-step
  p.tokens_per_micro = Tm;

  Mesh mesh;  // sizes only: describe_params reads nothing else
  mesh.data_size = opt.data;
  mesh.model_size = opt.model;
  const ParamTable table = describe_params(c, mesh);  // refuses shapes the mesh cannot split
  p.n_params = count_params(c);
  p.n_act_params = count_activated_params(c);

  const int64_t A = c.n_heads / Mm * c.d_head, nh = c.n_heads / Mm, H = c.d_ff / Mm, V = c.vocab_size / Mm;
  const int64_t M = c.d_model, n_moe = c.n_moe_layers(), n_dense = c.n_layers - n_moe;
  // Choices of this rank's tokens; with balanced routing a rank's experts receive as many.
  const int64_t routed = c.n_experts > 0 ? static_cast<int64_t>(std::llround(2.0 * T * opt.kept_fraction)) : 0;
  p.rows_per_rank = routed;
  const int64_t routed_micro = routed / p.micro_steps;  // held at once

  p.forward_flops_per_token = forward_flops(c, static_cast<double>(c.seq_len), 2.0 * c.seq_len,
                                            static_cast<double>(c.n_heads * c.d_head),
                                            static_cast<double>(c.d_ff), static_cast<double>(c.vocab_size)) /
                              static_cast<double>(c.seq_len);
  p.train_flops_per_token = 3.0 * p.forward_flops_per_token;
  p.train_flops_per_rank = 3.0 * forward_flops(c, double(T), double(routed), double(A), double(H), double(V));

  // memory
  const AdafactorOptions ada = AdafactorOptions::from(cfg.train);
  const ShardedState sh = sharded_state(c, table, cfg.train.shard_state ? D : 1, cfg.train.shard_weights,
                                        p.micro_steps, ada);
  int64_t repl_experts = 0;
  for (const Param& q : table.params) {
    p.local_params += q.size();
    if (q.data_axis >= 0 && q.data_replicas > 1) repl_experts += q.size();
  }
  p.memory.weights = 4 * sh.weights;
  p.memory.gradients = 4 * sh.gradients;
  p.memory.optimizer = 4 * sh.state;
  const bool remat = cfg.train.remat;
  p.memory.activations = opt.act_bytes * activation_elements(c, Tm, routed_micro, A, nh, H, V, remat);
  // eout and xin [rows, M] per MoE layer, ein and xout (alive only inside a layer)
  // once for all of them (remat: one set of the four)
  const int64_t dispatch_rows = n_moe == 0 ? 0 : remat ? 4 : 2 * n_moe + 2;
  p.memory.dispatch = opt.act_bytes * dispatch_rows * routed_micro * M;
  // train.exchange_chunks: the dispatched rows in flight, packed chunk-major (one buffer)
  if (cfg.train.exchange_chunks > 1 && n_moe > 0) p.memory.dispatch += opt.act_bytes * routed_micro * M;
  // remat recomputes the forward of every layer but the last inside the backward
  const int64_t re_moe = remat ? n_moe - (c.is_moe_layer(c.n_layers - 1) ? 1 : 0) : 0;
  const int64_t re_dense = remat ? c.n_layers - 1 - re_moe : 0;
  p.exchange_chunks = cfg.train.exchange_chunks;
  p.a2a_forward_blocks = (n_moe + re_moe) * p.micro_steps;
  p.a2a_backward_blocks = n_moe * p.micro_steps;
  p.expert_block_flops = 4.0 * double(routed_micro) * double(M) * double(H);  // two GEMMs of M x H per row
  if (remat) {
    ModelConfig layers = c;
    layers.n_layers = c.n_layers - 1;
    p.recompute_flops_per_rank = forward_flops(layers, double(T), double(routed), double(A), double(H), 0.0);
  }

  // communication (bytes as CommStats counts them; float collectives only;
  // train.exchange_dtype bf16: 2 bytes a value for the all-to-all and the activations)
  const int64_t f = 4, fx = cfg.train.exchange_dtype == "bf16" ? 2 : 4;
  if (D > 1) {
    const double remote = c.n_experts > 0 ? 1.0 - 1.0 / static_cast<double>(std::min<int64_t>(c.n_experts, D)) : 0.0;
    p.comm.alltoall = static_cast<int64_t>(std::llround((4.0 * n_moe + 2.0 * re_moe) * routed * remote * M * fx));
    p.comm.alltoall_calls = (4 * n_moe + 2 * re_moe) * p.micro_steps * cfg.train.exchange_chunks;  // a call per chunk
    p.comm.allreduce_data = f * sh.allreduced;
    p.comm.allreduce_replicas = f * repl_experts;
    p.comm.reduce_scatter = f * sh.scattered * p.micro_steps;  // every micro-step's backward reduce-scatters
    p.comm.allgather = f * sh.gathered;
    p.comm.allgather_first = f * sh.gathered_first;
  }
  if (Mm > 1) {
    // embedding and d xnf; attention out and d xn per layer; FFN out and d xn per
    // layer (dense: T rows; MoE: the rows this rank's experts computed); softmax
    // row sums and target logits (the row max is a MAX, which CommStats does not count).
    p.comm.allreduce_model = fx * M * (2 * T + 2 * c.n_layers * T + 2 * n_dense * T + 2 * n_moe * routed) + f * 2 * T;
    // remat: the recomputed forwards' attention and FFN outputs again
    p.comm.allreduce_model += fx * M * ((re_moe + re_dense) * T + re_dense * T + re_moe * routed);
  }
  // Calls, for latency: the activation reductions above (embedding, d xnf, 2 per
  // layer forward and 2 backward, 3 softmax statistics), then per tensor the
  // gradient reduction over data (replicated tensors) and the sums of squares of
  // the gradient norm and of Adafactor over the axes the tensor is split on.
  // Micro-steps repeat the activation reductions and the MoE statistics; the
  // gradients cross the mesh once per step.
  int64_t model_calls = (2 + 4 * c.n_layers + 3 + 2 * (re_moe + re_dense)) * p.micro_steps;
  // train.exchange_chunks: the experts' outputs and input gradients are summed per chunk
  model_calls += (cfg.train.exchange_chunks - 1) * (2 * n_moe + re_moe) * p.micro_steps;
  int64_t data_calls = (n_moe + 1) * p.micro_steps + (p.micro_steps > 1);  // + the step's target count
  for (const Param& q : table.params) {
    if (q.model_axis >= 0) model_calls += 2;
    if (sh.sharded && q.data_axis < 0) {
      // reduce-scatter per micro-step, and the statistics' sums over data (sums of
      // squares for the norm and the update, column sums and mean of vr); the
      // all-gathers are counted below
      data_calls += p.micro_steps + 2 + (adafactor_factored(q, ada) ? 2 : 0);
      continue;
    }
    data_calls += q.data_axis < 0 ? 1 : 2;
  }
  if (sh.sharded) data_calls += sh.gather_calls;
  p.comm.allreduce_model_calls = Mm > 1 ? model_calls : 0;
  p.comm.allreduce_data_calls = D > 1 ? data_calls : 0;
  return p;
}

int64_t largest_fitting_batch(const Config& config, PlanOptions opt, int64_t device_memory) {
  Config cfg = config;
  cfg.train.micro_rows = 0;  // with micro-steps any batch fits: this is the largest micro-step
  const ModelConfig& c = cfg.model;
  const int64_t unit = c.n_experts > 0 ? std::lcm(c.seq_len, c.group_size) : c.seq_len;  // tokens per data rank
  auto total = [&](int64_t per_rank) {
    opt.batch_tokens = per_rank * opt.data;
    return make_plan(cfg, opt).memory.total();
  };
  const int64_t one = total(unit);
  if (one > device_memory) return 0;
  const double slope = double(total(2 * unit) - one) / double(unit);  // bytes per token of a rank
  int64_t n = slope > 0 ? 1 + static_cast<int64_t>(double(device_memory - one) / (slope * unit)) : 1;
  while (n > 1 && total(n * unit) > device_memory) n--;  // rounding of the routed rows
  return n * unit * opt.data;
}

}  // namespace glam
