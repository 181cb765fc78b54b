// The ranges of the config keys (config.h). Every integer key has a lower and an
// upper bound, every real key is finite and bounded, and the sizes the keys
// multiply into (parameters, a batch's activations and logits, the tokens of a
// run) are computed in checked int64 arithmetic and kept under kMaxElements, so
// a huge value stops here naming its key instead of overflowing or ending in
// std::bad_alloc. The bounds lie far beyond the paper's largest model (GLaM
// 64B/64E: M 8192, H 32768, 64 layers, 128 heads, V 256K, 1024 x 1024 tokens).
#include <cmath>
#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/model/config.h"

namespace glam {

namespace {

void require_int(int64_t v, const char* key, int64_t lo, int64_t hi, const char* why = "") {
  if (v < lo) {
    if (lo == 1) throw UserError(msg(key, " must be positive, got ", v));
    throw UserError(msg(key, " must be >= ", lo, ", got ", v));
  }
  GLAM_REQUIRE(v <= hi, key, " must be at most ", hi, why, ", got ", v);
}

// lo < v <= hi (open_lo) or lo <= v <= hi, and finite.
void require_real(double v, const char* key, double lo, double hi, bool open_lo, const char* why = "") {
  GLAM_REQUIRE(std::isfinite(v), key, " must be a finite number, got ", v);
  const bool above = open_lo ? v > lo : v >= lo;
  if (!above && open_lo && lo == 0) throw UserError(msg(key, " must be positive, got ", v));
  GLAM_REQUIRE(above, key, " must be ", open_lo ? "> " : ">= ", lo, ", got ", v);
  GLAM_REQUIRE(v <= hi, key, " must be at most ", hi, why, ", got ", v);
}

void model_ranges(const ModelConfig& m) {
  require_int(m.vocab_size, "model.vocab_size", 1, int64_t{1} << 22, " (token ids are int32; the paper's largest is 256000)");
  require_int(m.d_model, "model.d_model", 1, 65536);
  require_int(m.n_layers, "model.n_layers", 1, 1024);
  require_int(m.n_heads, "model.n_heads", 1, 1024);
  require_int(m.d_head, "model.d_head", 1, 1024);
  require_int(m.d_ff, "model.d_ff", 1, int64_t{1} << 20);
  GLAM_REQUIRE(m.n_experts == 0 || m.n_experts >= 2,
               "model.n_experts must be 0 (dense) or at least 2 (top-2 gating), got ", m.n_experts);
  require_int(m.n_experts, "model.n_experts", 0, 4096);
  require_int(m.seq_len, "model.seq_len", 1, int64_t{1} << 20);
  if (m.n_experts > 0) require_int(m.group_size, "model.group_size", 1, int64_t{1} << 24);
  require_real(m.capacity_factor, "model.capacity_factor", 0, 4096, true,
               " (at n_experts every choice fits: capacity is capped at the group size)");
  require_real(m.aux_loss_weight, "model.aux_loss_weight", 0, 100, false);
  require_real(m.z_loss_weight, "model.z_loss_weight", 0, 100, false);
}

void train_ranges(const TrainConfig& t) {
  require_int(t.steps, "train.steps", 0, int64_t{1} << 40);
  require_int(t.batch_rows, "train.batch_rows", 1, int64_t{1} << 24);
  GLAM_REQUIRE(t.micro_rows >= 0 && t.micro_rows <= t.batch_rows, "train.micro_rows must be in [0, ",
               "train.batch_rows = ", t.batch_rows, "], got ", t.micro_rows);
  require_int(t.exchange_chunks, "train.exchange_chunks", 1, 64,
              " (chunks of each MoE all-to-all, every one an MPI call per direction; 1 is one blocking call)");
  // Adafactor's step is relative to the weights' RMS: lr 1 already moves a weight
  // by its own size every step.
  require_real(t.lr, "train.lr", 0, 1, true, " (Adafactor steps are relative to the weights' RMS; GLaM used 0.01)");
  require_int(t.warmup_steps, "train.warmup_steps", 0, int64_t{1} << 40);
  require_real(t.decay_pow, "train.decay_pow", 0, 1, true);
  require_real(t.clip_threshold, "train.clip_threshold", 0, 1e6, true);
  require_real(t.min_param_scale, "train.min_param_scale", 0, 1, false);
  require_int(t.factored_min_dim, "train.factored_min_dim", 1, int64_t{1} << 31);
  require_int(t.log_every, "train.log_every", 1, int64_t{1} << 40);
  require_int(t.val_every, "train.val_every", 0, int64_t{1} << 40);
  require_int(t.val_rows, "train.val_rows", 1, int64_t{1} << 24);
}

void checkpoint_ranges(const CheckpointConfig& c) {
  require_int(c.every_steps, "checkpoint.every_steps", 0, int64_t{1} << 40);
  require_real(c.every_minutes, "checkpoint.every_minutes", 0, 1e7, false);
  require_int(c.keep, "checkpoint.keep", 0, 1000000);
}

// A product of named keys, e.g. {"train.batch_rows", 8} x {"model.seq_len", 256}.
struct Factor {
  const char* key;  // nullptr: a constant of the formula
  int64_t value;
};

std::string describe(const std::vector<Factor>& f) {
  std::string s;
  for (const Factor& x : f)
    s += (s.empty() ? "" : " * ") + (x.key ? msg(x.key, " (", x.value, ")") : std::to_string(x.value));
  return s;
}

// The product, checked against int64 and `limit`; `what` says what it counts.
int64_t product(const std::vector<Factor>& f, const char* what, int64_t limit = kMaxElements) {
  int64_t p = 1;
  for (const Factor& x : f)
    GLAM_REQUIRE(checked_mul(p, x.value, &p), describe(f), " overflows int64 (", what, "); lower one of these keys");
  GLAM_REQUIRE(p <= limit, describe(f), " = ", p, " is more than ", limit, " (", what,
               "); lower one of these keys");
  return p;
}

// Elements of the parameters of one layer, and of the whole model.
void parameter_sizes(const ModelConfig& m) {
  const int64_t attn = product({{nullptr, 4}, {"model.d_model", m.d_model}, {"model.n_heads", m.n_heads},
                                {"model.d_head", m.d_head}}, "attention weights of a layer");
  const int64_t dense = product({{nullptr, 3}, {"model.d_model", m.d_model}, {"model.d_ff", m.d_ff}},
                                "GEGLU weights of a layer");
  const int64_t experts = product({{nullptr, 2}, {"model.n_experts", m.n_experts}, {"model.d_model", m.d_model},
                                   {"model.d_ff", m.d_ff}}, "expert weights of a MoE layer");
  const int64_t embedding = product({{"model.vocab_size", m.vocab_size}, {"model.d_model", m.d_model}},
                                    "the embedding");
  int64_t total = 0;
  const bool ok = checked_add(attn, std::max(dense, experts), &total) && checked_mul(total, m.n_layers, &total) &&
                  checked_add(total, embedding, &total);
  GLAM_REQUIRE(ok && total <= kMaxElements, "the model's parameters (model.n_layers ", m.n_layers,
               " layers of attention, GEGLU or experts, and the embedding) are more than ", kMaxElements,
               " elements; lower model.n_layers, model.d_model, model.d_ff or model.n_experts");
}

// Elements of the buffers of one batch and the tokens of the whole run.
void batch_sizes(const Config& c) {
  const ModelConfig& m = c.model;
  const Factor B{"train.batch_rows", c.train.batch_rows}, S{"model.seq_len", m.seq_len};
  const int64_t tokens = product({B, S}, "tokens of a batch");
  product({B, S, {"model.d_model", m.d_model}}, "activations of a batch, per layer");
  product({B, S, {"model.d_ff", m.d_ff}}, "hidden activations of a batch, per layer");
  product({B, S, {"model.n_heads", m.n_heads}, {"model.d_head", m.d_head}}, "attention activations of a batch");
  product({B, S, {"model.vocab_size", m.vocab_size}}, "logits of a batch");
  product({B, S, {"model.n_experts", m.n_experts}}, "gate probabilities of a batch");
  product({{"train.val_rows", c.train.val_rows}, S}, "held-out tokens of a source");
  product({{"train.steps", c.train.steps}, B, S}, "tokens of the whole run", INT64_MAX / 4);
  if (m.n_experts == 0) return;
  GLAM_REQUIRE(tokens % m.group_size == 0, "model.group_size ", m.group_size,
               " must divide the tokens of a batch (train.batch_rows * model.seq_len = ", tokens, ")");
  // micro_rows <= batch_rows: the product is inside int64 too
  const int64_t micro_tokens = c.train.micro_rows * m.seq_len;
  GLAM_REQUIRE(c.train.micro_rows == 0 || micro_tokens % m.group_size == 0, "model.group_size ", m.group_size,
               " must divide the tokens of a micro-step (train.micro_rows * model.seq_len = ", micro_tokens, ")");
}

}  // namespace

void validate_ranges(const Config& cfg) {
  model_ranges(cfg.model);
  train_ranges(cfg.train);
  checkpoint_ranges(cfg.checkpoint);
  parameter_sizes(cfg.model);
  batch_sizes(cfg);
}

}  // namespace glam
