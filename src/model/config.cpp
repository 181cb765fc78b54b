// Configuration: INI files and command-line overrides through Boost.Program_options.
// Every key lives in a section ([model], [train], [data]) and is spelled
// section.key on the command line: --model.d_model 512.
#include "glam/model/config.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include "glam/base/check.h"
#include "glam/base/cli.h"

namespace po = boost::program_options;

namespace glam {

std::ostream& operator<<(std::ostream& os, Seed s) { return os << s.value; }

void validate(boost::any& v, const std::vector<std::string>& values, Seed*, int) {
  po::validators::check_first_occurrence(v);
  const std::string& s = po::validators::get_single_string(values);
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    throw po::invalid_option_value(s);  // "the argument ('-1') for option '--train.seed' is invalid"
  v = Seed(value);
}

void add_config_options(po::options_description& desc, Config& c) {
  ModelConfig& m = c.model;
  TrainConfig& t = c.train;
  // clang-format off
  desc.add_options()
    ("model.vocab_size", po::value(&m.vocab_size)->default_value(m.vocab_size), "V: vocabulary size (tied embedding rows)")
    ("model.d_model", po::value(&m.d_model)->default_value(m.d_model), "M: model width")
    ("model.n_layers", po::value(&m.n_layers)->default_value(m.n_layers), "L: layers (MoE on even layers)")
    ("model.n_heads", po::value(&m.n_heads)->default_value(m.n_heads), "attention heads")
    ("model.d_head", po::value(&m.d_head)->default_value(m.d_head), "width of one head")
    ("model.d_ff", po::value(&m.d_ff)->default_value(m.d_ff), "H: hidden width of GEGLU and of each expert")
    ("model.n_experts", po::value(&m.n_experts)->default_value(m.n_experts), "E: experts per MoE layer (0 = dense)")
    ("model.group_size", po::value(&m.group_size)->default_value(m.group_size), "tokens per routing group")
    ("model.capacity_factor", real_value(&m.capacity_factor), "expert capacity factor")
    ("model.expert_act", po::value(&m.expert_act)->default_value(m.expert_act), "expert activation: relu | gelu")
    ("model.second_policy", po::value(&m.second_policy)->default_value(m.second_policy), "second expert: all | random")
    ("model.seq_len", po::value(&m.seq_len)->default_value(m.seq_len), "tokens per training row")
    ("model.aux_loss_weight", real_value(&m.aux_loss_weight), "weight of the load-balancing loss")
    ("model.z_loss_weight", real_value(&m.z_loss_weight), "weight of the output z-loss")
    ("train.steps", po::value(&t.steps)->default_value(t.steps), "optimizer steps")
    ("train.batch_rows", po::value(&t.batch_rows)->default_value(t.batch_rows), "rows of seq_len tokens per step (global)")
    ("train.micro_rows", po::value(&t.micro_rows)->default_value(t.micro_rows), "rows per data rank per micro-step, gradients accumulating over the step's micro-steps (0: one micro-step)")
    ("train.remat", po::value(&t.remat)->default_value(t.remat), "rematerialise: keep each layer's input only and recompute its forward inside the backward (true | false)")
    ("train.shard_state", po::value(&t.shard_state)->default_value(t.shard_state), "shard the gradients, Adafactor statistics and update of every tensor replicated over data across the data axis (reduce-scatter, update, all-gather; true | false)")
    ("train.shard_weights", po::value(&t.shard_weights)->default_value(t.shard_weights), "with train.shard_state: keep only each data rank's rows of those weights too, and gather each layer's just before use (the next layer's while this one computes; true | false)")
    ("train.exchange_dtype", po::value(&t.exchange_dtype)->default_value(t.exchange_dtype), "what the expert all-to-all and the model-axis activation sums send: fp32 | bf16")
    ("train.exchange_chunks", po::value(&t.exchange_chunks)->default_value(t.exchange_chunks), "split each MoE layer's all-to-all into k chunks: chunk c+1 travels (non-blocking) while chunk c's experts compute, and its results go back while the next computes (1: one blocking all-to-all; CPU backend only)")
    ("train.lr", real_value(&t.lr), "learning rate for the first warmup_steps")
    ("train.warmup_steps", po::value(&t.warmup_steps)->default_value(t.warmup_steps), "steps at constant lr before lr*sqrt(warmup/t)")
    ("train.decay_pow", real_value(&t.decay_pow), "Adafactor second-moment decay exponent")
    ("train.clip_threshold", real_value(&t.clip_threshold), "Adafactor update clipping")
    ("train.min_param_scale", real_value(&t.min_param_scale), "Adafactor minimum parameter scale")
    ("train.factored_min_dim", po::value(&t.factored_min_dim)->default_value(t.factored_min_dim), "factor the second moment when both last dims >= this")
    ("train.seed", po::value(&t.seed)->default_value(t.seed), "seed for initialisation and sampling (an integer from 0 to 2^64-1)")
    ("train.log_every", po::value(&t.log_every)->default_value(t.log_every), "steps between progress lines")
    ("train.val_every", po::value(&t.val_every)->default_value(t.val_every), "steps between validation passes (0: off)")
    ("train.val_rows", po::value(&t.val_rows)->default_value(t.val_rows), "held-out rows of each source per validation pass (rounded up to a multiple of batch_rows)")
    ("train.cpu_precision", po::value(&t.cpu_precision)->default_value(t.cpu_precision), "CPU backend GEMM operands: fp32 (reference) | bf16 (oneDNN, fp32 sums; faster on CPUs with AVX512-BF16 or AMX)")
    ("checkpoint.every_steps", po::value(&c.checkpoint.every_steps)->default_value(c.checkpoint.every_steps), "checkpoint every N steps (0: only at the end)")
    ("checkpoint.every_minutes", real_value(&c.checkpoint.every_minutes), "also checkpoint every T minutes (0: off)")
    ("checkpoint.keep", po::value(&c.checkpoint.keep)->default_value(c.checkpoint.keep), "newest checkpoints kept (0: all)")
    ("data.corpus", po::value(&c.data.corpus)->default_value(c.data.corpus), "corpus: .h5 file, shard manifest .json, or mixture file (docs/DATA.md)")
    ("data.tokenizer", po::value(&c.data.tokenizer)->default_value(c.data.tokenizer), "SentencePiece model file");
  // clang-format on
}

namespace {

std::string where(const std::string& source) { return source.empty() ? "" : " in " + source; }

// The shortest text that reads back as exactly d.
std::string shortest(double d) {
  char buf[32];
  auto res = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, res.ptr);
}

// A command that declares --mesh gets it checked here, before any work: "DxM"
// strictly (cli.h); that D * M matches the ranks started is the mesh's check.
void require_mesh_shape(const po::options_description& cli, const po::variables_map& vm) {
  if (!cli.find_nothrow("mesh", false) || !vm.count("mesh")) return;
  const std::string shape = vm["mesh"].as<std::string>();
  int d = 0, m = 0;
  if (!shape.empty()) parse_mesh(shape, "--mesh", &d, &m);
}

}  // namespace

namespace {

// A key that names one of two choices; a UserError naming the key otherwise.
void require_either(const std::string& value, const char* key, const char* a, const char* b) {
  GLAM_REQUIRE(value == a || value == b, key, " must be ", a, " or ", b, ", got '", value, "'");
}

}  // namespace

// Ranges and sizes first (config_ranges.cpp), then the choices among names.
void Config::validate() const {
  validate_ranges(*this);
  require_either(model.expert_act, "model.expert_act", "relu", "gelu");
  require_either(model.second_policy, "model.second_policy", "all", "random");
  require_either(train.cpu_precision, "train.cpu_precision", "fp32", "bf16");
  require_either(train.exchange_dtype, "train.exchange_dtype", "fp32", "bf16");
  GLAM_REQUIRE(!train.shard_weights || train.shard_state, "train.shard_weights needs train.shard_state true "
               "(the weights are sharded with the rows whose state a data rank keeps)");
}

std::string Config::to_ini() const {
  Config copy = *this;
  po::options_description desc;
  add_config_options(desc, copy);
  std::ostringstream os;
  std::string section;
  for (const auto& opt : desc.options()) {
    const std::string& key = opt->long_name();
    const std::string sec = key.substr(0, key.find('.'));
    if (sec != section) {
      os << (section.empty() ? "" : "\n") << "[" << sec << "]\n";
      section = sec;
    }
    boost::any value;
    opt->semantic()->apply_default(value);
    os << key.substr(key.find('.') + 1) << " = ";
    if (auto* i = boost::any_cast<int64_t>(&value)) os << *i;
    else if (auto* u = boost::any_cast<uint64_t>(&value)) os << *u;
    else if (auto* seed = boost::any_cast<Seed>(&value)) os << *seed;
    else if (auto* d = boost::any_cast<double>(&value)) os << shortest(*d);
    else if (auto* b = boost::any_cast<bool>(&value)) os << (*b ? "true" : "false");
    else if (auto* s = boost::any_cast<std::string>(&value)) os << *s;
    os << "\n";
  }
  return os.str();
}

po::variables_map parse_args(const std::vector<std::string>& args, const po::options_description& cli,
                             Config& cfg) {
  po::options_description keys("Configuration keys (config file [section] key, or --section.key)");
  add_config_options(keys, cfg);
  po::options_description all;
  all.add(cli).add(keys);
  po::variables_map vm;
  try {
    po::store(parse_command_line(args, all, "command line"), vm);
  } catch (const po::error& e) {
    throw UserError(msg("command line: ", e.what()));
  }
  require_mesh_shape(cli, vm);
  if (vm.count("help")) return vm;
  if (cli.find_nothrow("config", false) && vm.count("config")) {
    cfg.source = vm["config"].as<std::string>();
    std::ifstream in(cfg.source);
    GLAM_REQUIRE(in, "cannot open config file '", cfg.source, "'");
    try {
      po::store(po::parse_config_file(in, keys, false), vm);
    } catch (const po::error& e) {
      throw UserError(msg("config file ", cfg.source, ": ", e.what()));
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    throw UserError(msg(e.what(), where(cfg.source)));
  }
  try {
    cfg.validate();
  } catch (const UserError& e) {
    throw UserError(msg(e.what(), where(cfg.source)));
  }
  return vm;
}

Config load_config_file(const std::string& path) {
  po::options_description cli;
  cli.add_options()("config", po::value<std::string>(), "config file");
  Config cfg;
  parse_args({"--config", path}, cli, cfg);
  return cfg;
}

}  // namespace glam
