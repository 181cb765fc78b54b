// The run configuration (include/glam/model/config.h): INI files plus --section.key
// overrides through glam::parse_args, as `glam train` calls it. Checks that
// the command line wins over the file; unknown keys, bad values and impossible
// shapes raise UserError naming the key (and the file when it came from one);
// to_ini() round-trips; every shipped input/*.cfg parses and validates; and the
// parameter counts of GLaM 64B/64E match the paper (the GLaM paper, Du et al. 2022).
// Temporary INI files go to std::filesystem::temp_directory_path(); the repo's
// input/ directory is found by walking up from the working directory (ctest runs
// the test inside the build tree, which lies inside the repo).
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/model/config.h"
#include "glam/model/params.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;
using Catch::Matchers::Contains;
using glam::Config;

namespace {

// An INI file that lives for one test.
struct TempIni {
  fs::path path;
  TempIni(const std::string& name, const std::string& text)
      : path(fs::temp_directory_path() /
             ("glam_test_config_" + std::to_string(::getpid()) + "_" + name + ".cfg")) {
    std::ofstream(path) << text;
  }
  ~TempIni() { std::error_code ec; fs::remove(path, ec); }
  std::string str() const { return path.string(); }
};

fs::path repo_root() {
  for (fs::path dir = fs::current_path(); !dir.empty(); dir = dir.parent_path()) {
    if (fs::exists(dir / "input" / "glam-tiny.cfg")) return dir;
    if (dir == dir.parent_path()) break;
  }
  FAIL("no input/glam-tiny.cfg above " << fs::current_path());
  return {};
}

// The subcommand options of `glam train` that matter here.
po::options_description train_cli() {
  po::options_description cli("test");
  cli.add_options()("help,h", "help")("config", po::value<std::string>(), "INI config file")(
      "run-dir", po::value<std::string>(), "run dir");
  return cli;
}

Config parse(const std::vector<std::string>& args) {
  Config cfg;
  glam::parse_args(args, train_cli(), cfg);
  return cfg;
}

// The UserError message parse_args raises, or "<no error>".
std::string error_of(const std::vector<std::string>& args) {
  try {
    parse(args);
  } catch (const glam::UserError& e) {
    return e.what();
  }
  return "<no error>";
}

void check_same(const Config& a, const Config& b) {
  const glam::ModelConfig &m = a.model, &n = b.model;
  CHECK(m.vocab_size == n.vocab_size);
  CHECK(m.d_model == n.d_model);
  CHECK(m.n_layers == n.n_layers);
  CHECK(m.n_heads == n.n_heads);
  CHECK(m.d_head == n.d_head);
  CHECK(m.d_ff == n.d_ff);
  CHECK(m.n_experts == n.n_experts);
  CHECK(m.group_size == n.group_size);
  CHECK(m.capacity_factor == n.capacity_factor);
  CHECK(m.expert_act == n.expert_act);
  CHECK(m.second_policy == n.second_policy);
  CHECK(m.seq_len == n.seq_len);
  CHECK(m.aux_loss_weight == n.aux_loss_weight);
  CHECK(m.z_loss_weight == n.z_loss_weight);
  const glam::TrainConfig &t = a.train, &u = b.train;
  CHECK(t.steps == u.steps);
  CHECK(t.batch_rows == u.batch_rows);
  CHECK(t.lr == u.lr);
  CHECK(t.warmup_steps == u.warmup_steps);
  CHECK(t.decay_pow == u.decay_pow);
  CHECK(t.clip_threshold == u.clip_threshold);
  CHECK(t.min_param_scale == u.min_param_scale);
  CHECK(t.factored_min_dim == u.factored_min_dim);
  CHECK(t.seed == u.seed);
  CHECK(t.log_every == u.log_every);
  CHECK(t.val_every == u.val_every);
  CHECK(t.val_rows == u.val_rows);
  CHECK(a.data.corpus == b.data.corpus);
  CHECK(a.data.tokenizer == b.data.tokenizer);
}

}  // namespace

TEST_CASE("config: input/glam-tiny.cfg is read, the command line wins") {
  const std::string tiny = (repo_root() / "input" / "glam-tiny.cfg").string();
  const Config cfg = parse({"--config", tiny});
  CHECK(cfg.source == tiny);
  CHECK(cfg.model.vocab_size == 8000);
  CHECK(cfg.model.d_model == 256);
  CHECK(cfg.model.n_layers == 4);
  CHECK(cfg.model.n_experts == 8);
  CHECK(cfg.model.group_size == 512);
  CHECK(cfg.model.capacity_factor == 2.0);
  CHECK(cfg.model.expert_act == "relu");
  CHECK(cfg.model.seq_len == 256);
  CHECK(cfg.train.steps == 300);
  CHECK(cfg.train.batch_rows == 8);
  CHECK(cfg.train.log_every == 10);
  CHECK(cfg.train.val_every == 50);
  CHECK(cfg.train.val_rows == 8);
  CHECK(cfg.train.decay_pow == 0.8);  // not in the file: the default
  CHECK(cfg.data.corpus == "data/demo/mixture.ini");
  CHECK(cfg.data.tokenizer == "data/demo/spm.model");

  const Config over = parse({"--config", tiny, "--model.d_model", "512", "--run-dir", "x"});
  CHECK(over.model.d_model == 512);
  CHECK(over.model.n_layers == 4);
  CHECK(over.train.steps == 300);
  // before or after --config, the flag wins
  CHECK(parse({"--train.steps", "7", "--config", tiny}).train.steps == 7);
  CHECK(parse({"--config", tiny, "--data.corpus", "other.h5"}).data.corpus == "other.h5");

  // With no file, the struct defaults hold.
  const Config def = parse({});
  CHECK(def.model.d_model == glam::ModelConfig{}.d_model);
  CHECK(def.train.warmup_steps == glam::TrainConfig{}.warmup_steps);
  CHECK(def.source.empty());
}

TEST_CASE("config: unknown keys and flags are UserErrors naming the key (and the file)") {
  TempIni bogus("bogus", "[model]\nd_model = 128\nbogus = 3\n");
  std::string e = error_of({"--config", bogus.str()});
  INFO(e);
  CHECK_THAT(e, Contains("model.bogus"));
  CHECK_THAT(e, Contains(bogus.str()));

  TempIni section("section", "[modle]\nd_model = 128\n");
  e = error_of({"--config", section.str()});
  INFO(e);
  CHECK_THAT(e, Contains("modle.d_model"));
  CHECK_THAT(e, Contains(section.str()));

  e = error_of({"--model.bogus", "3"});
  INFO(e);
  CHECK_THAT(e, Contains("model.bogus"));
  e = error_of({"--frobnicate"});
  INFO(e);
  CHECK_THAT(e, Contains("frobnicate"));

  e = error_of({"--config", "does/not/exist.cfg"});
  INFO(e);
  CHECK_THAT(e, Contains("does/not/exist.cfg"));
}

TEST_CASE("config: bad values are UserErrors naming the key") {
  std::string e = error_of({"--model.d_model", "abc"});
  INFO(e);
  CHECK_THAT(e, Contains("model.d_model"));
  CHECK_THAT(e, Contains("abc"));
  e = error_of({"--train.lr", "fast"});
  INFO(e);
  CHECK_THAT(e, Contains("train.lr"));
  e = error_of({"--model.n_layers", "4.5"});
  INFO(e);
  CHECK_THAT(e, Contains("model.n_layers"));

  CHECK_THAT(error_of({"--train.val_every", "-1"}), Contains("train.val_every must be >= 0, got -1"));
  CHECK_THAT(error_of({"--train.val_rows", "0"}), Contains("train.val_rows must be positive, got 0"));

  TempIni file("badvalue", "[model]\nd_model = abc\n");
  e = error_of({"--config", file.str()});
  INFO(e);
  CHECK_THAT(e, Contains("model.d_model"));
  CHECK_THAT(e, Contains(file.str()));
}

TEST_CASE("config: impossible shapes are UserErrors naming the key") {
  struct Case { std::vector<std::string> args; const char* key; };
  const std::vector<Case> cases = {
      {{"--model.n_experts", "1"}, "model.n_experts"},
      {{"--model.n_experts", "-2"}, "model.n_experts"},
      // default batch: 8 rows of 256 tokens = 2048 tokens; 300 does not divide it
      {{"--model.group_size", "300"}, "model.group_size"},
      {{"--model.group_size", "0"}, "model.group_size"},
      {{"--model.d_model", "0"}, "model.d_model"},
      {{"--model.n_heads", "-1"}, "model.n_heads"},
      {{"--model.expert_act", "tanh"}, "model.expert_act"},
      {{"--model.second_policy", "sometimes"}, "model.second_policy"},
      {{"--model.capacity_factor", "0"}, "model.capacity_factor"},
      {{"--train.batch_rows", "0"}, "train.batch_rows"},
      {{"--train.decay_pow", "1.5"}, "train.decay_pow"},
      {{"--train.lr", "-0.1"}, "train.lr"},
  };
  for (const Case& c : cases) {
    const std::string e = error_of(c.args);
    INFO(c.args[0] << " " << c.args[1] << " -> " << e);
    CHECK_THAT(e, Contains(c.key));
  }
  // The same check through a file also names the file.
  TempIni file("shape", "[model]\nn_experts = 1\n");
  const std::string e = error_of({"--config", file.str()});
  INFO(e);
  CHECK_THAT(e, Contains("model.n_experts"));
  CHECK_THAT(e, Contains(file.str()));
  // A dense model has no routing groups: group_size is not checked.
  CHECK(parse({"--model.n_experts", "0", "--model.group_size", "300"}).model.n_experts == 0);
}

TEST_CASE("config: to_ini() round-trips every field") {
  const Config a = parse({"--model.vocab_size", "1234", "--model.d_model", "384", "--model.n_layers", "6",
                          "--model.n_heads", "6", "--model.d_head", "32", "--model.d_ff", "1536",
                          "--model.n_experts", "16", "--model.group_size", "128", "--model.capacity_factor", "1.25",
                          "--model.expert_act", "gelu", "--model.second_policy", "random", "--model.seq_len", "128",
                          "--model.aux_loss_weight", "0.02", "--model.z_loss_weight", "0.0003",
                          "--train.steps", "42", "--train.batch_rows", "16", "--train.lr", "0.003",
                          "--train.warmup_steps", "500", "--train.decay_pow", "0.75", "--train.clip_threshold", "1.5",
                          "--train.min_param_scale", "0.002", "--train.factored_min_dim", "64",
                          "--train.seed", "18446744073709551615", "--train.log_every", "3",
                          "--train.val_every", "25", "--train.val_rows", "16",
                          "--data.corpus", "some/dir/c.h5", "--data.tokenizer", "t.model"});
  const std::string ini = a.to_ini();
  std::printf("  to_ini():\n%s", ini.c_str());
  CHECK_THAT(ini, Contains("[model]"));
  CHECK_THAT(ini, Contains("[train]"));
  CHECK_THAT(ini, Contains("[data]"));
  CHECK_THAT(ini, Contains("d_model = 384"));
  TempIni file("roundtrip", ini);
  check_same(parse({"--config", file.str()}), a);
  check_same(glam::load_config_file(file.str()), a);
}

TEST_CASE("config: to_ini() keeps every digit of floating-point values") {
  // The run dir's config.cfg is written by to_ini() and read back by glam generate:
  // a value must come back bit for bit.
  const Config a = parse({"--model.capacity_factor", "1.2345678901234567", "--train.lr", "0.00123456789",
                          "--model.z_loss_weight", "1.0000001e-4"});
  TempIni file("digits", a.to_ini());
  const Config b = parse({"--config", file.str()});
  INFO(a.to_ini());
  CHECK(b.model.capacity_factor == a.model.capacity_factor);
  CHECK(b.train.lr == a.train.lr);
  CHECK(b.model.z_loss_weight == a.model.z_loss_weight);
}

TEST_CASE("config: every input/*.cfg parses and validates") {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(repo_root() / "input")) {
    if (entry.path().extension() != ".cfg") continue;
    INFO(entry.path());
    Config cfg;
    CHECK_NOTHROW(cfg = glam::load_config_file(entry.path().string()));
    CHECK_NOTHROW(cfg.validate());
    CHECK(cfg.model.d_model > 0);
    n++;
  }
  std::printf("  config: %d input/*.cfg files parsed\n", n);
  CHECK(n >= 12);
}

TEST_CASE("config: parameter counts of GLaM 64B/64E match the paper") {
  const Config cfg = glam::load_config_file((repo_root() / "input" / "glam-64b-64e.cfg").string());
  const double total = static_cast<double>(glam::count_params(cfg.model));
  const double active = static_cast<double>(glam::count_activated_params(cfg.model));
  // Reference section 5: 1,161.8B total and 96.6B activated with V = 256,000.
  const double tol = 1e-3;
  const double err_total = std::abs(total / 1161.8e9 - 1.0), err_active = std::abs(active / 96.6e9 - 1.0);
  std::printf("  count_params %.4e (paper 1161.8e9, rel err %.2e), activated %.4e (paper 96.6e9, rel err %.2e), tol %.0e\n",
              total, err_total, active, err_active, tol);
  CHECK(err_total <= tol);
  CHECK(err_active <= tol);
  // The counting rule of section 5 written out (the implementation may add the final norm's M).
  const double M = 8192, H = 32768, hd = 128 * 128, L = 64, E = 64, V = 256000;
  const double attn = 4 * M * hd + 128 * 32 + 2 * M;
  const double rule_total = V * M + L * attn + (L / 2) * 3 * M * H + (L / 2) * (E * 2 * M * H + M * E);
  const double rule_active = V * M + L * attn + (L / 2) * 3 * M * H + (L / 2) * (2 * 2 * M * H + M * E);
  CHECK(std::abs(total - rule_total) <= M);
  CHECK(std::abs(active - rule_active) <= M);
  // A dense model activates everything.
  const Config dense = glam::load_config_file((repo_root() / "input" / "glam-1.7b.cfg").string());
  CHECK(glam::count_params(dense.model) == glam::count_activated_params(dense.model));
}
