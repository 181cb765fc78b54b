// The run configuration: INI files read by Boost.Program_options, every key
// overridable on the command line as --section.key value. Field names follow the
// GLaM paper (d_model = M, d_ff = H, n_experts = E).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace glam {

// A seed: an integer in [0, 2^64). Its own type so that the options reader
// refuses "-1" and "abc" with the option's name, where a plain uint64_t option
// would wrap "-1" to 2^64 - 1 without a word.
struct Seed {
  uint64_t value = 0;
  Seed() = default;
  Seed(uint64_t v) : value(v) {}  // NOLINT: a seed is used as a number everywhere
  operator uint64_t() const { return value; }
};
std::ostream& operator<<(std::ostream& os, Seed s);
// Boost.Program_options' hook for Seed (found by argument-dependent lookup).
void validate(boost::any& v, const std::vector<std::string>& values, Seed*, int);

struct ModelConfig {
  int64_t vocab_size = 8000;     // V (tied embedding rows)
  int64_t d_model = 256;         // M
  int64_t n_layers = 4;          // L; MoE on even layers when n_experts > 0
  int64_t n_heads = 4;
  int64_t d_head = 64;
  int64_t d_ff = 1024;           // H: GEGLU hidden and each expert's hidden
  int64_t n_experts = 8;         // E; 0 = dense model (GEGLU in every layer)
  int64_t group_size = 512;      // tokens per routing group (fixed in tokens)
  double capacity_factor = 2.0;
  std::string expert_act = "relu";        // relu | gelu
  std::string second_policy = "all";      // all | random (GShard)
  int64_t seq_len = 256;
  double aux_loss_weight = 0.01;
  double z_loss_weight = 1e-4;

  bool is_moe_layer(int64_t l) const { return n_experts > 0 && l % 2 == 0; }
  int64_t n_moe_layers() const { return n_experts > 0 ? (n_layers + 1) / 2 : 0; }
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t batch_rows = 8;        // global batch: rows of seq_len tokens per step
  int64_t micro_rows = 0;        // rows per data rank per micro-step; gradients accumulate (0: all of them)
  bool remat = false;            // keep each layer's input only; recompute its forward in the backward
  bool shard_state = false;      // ZeRO over data: gradients reduce-scattered, state and update sharded
  bool shard_weights = false;    // ... and the weights too, gathered per layer before use (needs shard_state)
  std::string exchange_dtype = "fp32";  // all-to-all and model-axis activations on the wire: fp32 | bf16
  int64_t exchange_chunks = 1;   // each MoE all-to-all in k chunks, overlapping the experts (1: one blocking call)
  double lr = 0.01;              // constant for warmup_steps, then lr*sqrt(warmup/t)
  int64_t warmup_steps = 10000;
  double decay_pow = 0.8;        // Adafactor: rho_t = 1 - (t+1)^-decay_pow
  double clip_threshold = 1.0;   // Adafactor update clipping
  double min_param_scale = 1e-3; // Adafactor: step scaled by max(this, RMS(W))
  int64_t factored_min_dim = 128;
  Seed seed = 1234;
  int64_t log_every = 1;
  int64_t val_every = 0;         // steps between validation passes (0: off)
  int64_t val_rows = 8;          // held-out rows of each source per pass (rounded up to a multiple of batch_rows)
  std::string cpu_precision = "fp32";  // CPU GEMM operands: fp32 | bf16 (include/glam/layers/cpu/gemm.h)
};

struct CheckpointConfig {
  int64_t every_steps = 0;       // write a checkpoint every N steps (0: only at the end)
  double every_minutes = 0.0;    // and every T minutes of training (0: off)
  int64_t keep = 3;              // newest checkpoints kept (0: all)
};

struct DataConfig {
  std::string corpus;            // corpus .h5, shard manifest .json or mixture file (mixture.h)
  std::string tokenizer;         // SentencePiece model file
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  CheckpointConfig checkpoint;
  std::string mesh;              // "DxM"; empty = all ranks on data
  std::string source;            // the file it came from (for messages)

  // Checks shapes and values; throws UserError naming the key.
  void validate() const;
  // The effective configuration in the same INI syntax it is read from.
  std::string to_ini() const;
};

// Elements any one size the config implies may reach (a tensor, a batch buffer,
// all parameters together): 2^46, 256 TiB of fp32, far above the paper's largest.
constexpr int64_t kMaxElements = int64_t{1} << 46;

// The range of every key and the products of sizes (config_ranges.cpp): finite
// reals, integer bounds, products in checked int64 under kMaxElements. Throws
// UserError naming the key(s) and the range. Part of Config::validate().
void validate_ranges(const Config& cfg);

// Adds every config key, named "section.key", bound to the fields of cfg.
void add_config_options(boost::program_options::options_description& desc, Config& cfg);

// Parses a subcommand's arguments: its own options in `cli` plus every config key,
// from the file named by --config (if `cli` declares it and it is given) and from
// the command line, which wins. Unknown keys, bad values and impossible shapes
// throw UserError naming the key or flag. Returns the parsed variables.
boost::program_options::variables_map parse_args(
    const std::vector<std::string>& args,
    const boost::program_options::options_description& cli, Config& cfg);

// Reads a config file alone (e.g. the one saved in a run dir) and validates it.
Config load_config_file(const std::string& path);

}  // namespace glam
