// Values and flags (issue 15): every config key has a range and a UserError that
// names it; products of sizes are computed in checked int64 (no overflow, under
// kMaxElements); meshes are parsed strictly; stray positional arguments are
// refused; expert_capacity saturates at the group size for any capacity factor.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/model/config.h"
#include "glam/model/moe.h"
#include "glam/plan/plan.h"

namespace po = boost::program_options;
using Catch::Matchers::Contains;

namespace {

po::options_description train_like_cli() {
  po::options_description cli("test");
  cli.add_options()("help,h", "help")("run-dir", po::value<std::string>(), "run dir")(
      "mesh", po::value<std::string>()->default_value(""), "mesh");
  return cli;
}

// The UserError message parse_args raises, or "<no error>".
std::string error_of(const std::vector<std::string>& args) {
  glam::Config cfg;
  try {
    glam::parse_args(args, train_like_cli(), cfg);
  } catch (const glam::UserError& e) {
    return e.what();
  }
  return "<no error>";
}

const std::string kHuge = "9223372036854775807";  // 2^63 - 1

}  // namespace

TEST_CASE("values: every size key refuses huge values naming the key") {
  const char* keys[] = {"model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.d_head",
                        "model.d_ff", "model.n_experts", "model.seq_len", "model.group_size", "train.batch_rows",
                        "train.steps", "train.warmup_steps", "train.log_every", "train.val_every", "train.val_rows",
                        "train.factored_min_dim", "checkpoint.every_steps", "checkpoint.keep", "train.micro_rows"};
  for (const char* key : keys)
    for (const std::string& v : {kHuge, std::string("4611686018427387904"), std::string("1099511627777")}) {
      const std::string e = error_of({std::string("--") + key, v});
      INFO(key << " " << v << " -> " << e);
      CHECK_THAT(e, Contains(key));
      CHECK_THAT(e, Contains("at most") || Contains("must be in"));
    }
}

TEST_CASE("values: size keys refuse zero and negative values") {
  const char* positive[] = {"model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.d_head",
                            "model.d_ff", "model.seq_len", "model.group_size", "train.batch_rows", "train.log_every",
                            "train.val_rows", "train.factored_min_dim"};
  for (const char* key : positive) {
    const std::string e = error_of({std::string("--") + key, "0"});
    INFO(key << " 0 -> " << e);
    CHECK_THAT(e, Contains(std::string(key) + " must be positive, got 0"));
  }
  const char* non_negative[] = {"train.steps", "train.warmup_steps", "train.val_every", "checkpoint.every_steps",
                                "checkpoint.keep"};
  for (const char* key : non_negative) {
    const std::string e = error_of({std::string("--") + key, "-1"});
    INFO(key << " -1 -> " << e);
    CHECK_THAT(e, Contains(std::string(key) + " must be >= 0, got -1"));
  }
}

TEST_CASE("values: real keys are finite and bounded") {
  struct Case { const char* key; std::vector<const char*> bad; };
  const std::vector<Case> cases = {
      {"train.lr", {"inf", "-inf", "nan", "1e30", "1.5", "0", "-0.1"}},
      {"model.capacity_factor", {"inf", "nan", "1e18", "0", "-1"}},
      {"model.aux_loss_weight", {"inf", "nan", "1e9", "-1"}},
      {"model.z_loss_weight", {"inf", "nan", "1e9", "-0.5"}},
      {"train.decay_pow", {"inf", "nan", "1.5", "0"}},
      {"train.clip_threshold", {"inf", "nan", "0", "1e300"}},
      {"train.min_param_scale", {"inf", "nan", "-1", "2"}},
      {"checkpoint.every_minutes", {"inf", "nan", "-1", "1e300"}},
  };
  for (const Case& c : cases)
    for (const char* v : c.bad) {
      const std::string e = error_of({std::string("--") + c.key, v});
      INFO(c.key << " " << v << " -> " << e);
      CHECK_THAT(e, Contains(c.key));
    }
  // what the paper and the shipped configs use still passes
  CHECK(error_of({"--train.lr", "1"}) == "<no error>");
  CHECK(error_of({"--model.capacity_factor", "1.25"}) == "<no error>");
  CHECK(error_of({"--checkpoint.every_minutes", "30"}) == "<no error>");
}

TEST_CASE("values: products of sizes are checked in int64, naming the keys") {
  // each key within its own range, their products not
  std::string e = error_of({"--train.batch_rows", "16777216", "--model.seq_len", "1048576"});
  INFO(e);
  CHECK_THAT(e, Contains("train.batch_rows (16777216) * model.seq_len (1048576)"));
  CHECK_THAT(e, Contains("is more than 70368744177664"));
  e = error_of({"--model.n_layers", "1024", "--model.n_experts", "4096", "--model.d_ff", "1048576",
                "--model.d_model", "65536"});
  INFO(e);
  CHECK_THAT(e, Contains("is more than 70368744177664 (expert weights of a MoE layer)"));
  CHECK_THAT(e, Contains("model.n_experts (4096)"));
  e = error_of({"--model.n_layers", "1024", "--model.n_experts", "4096", "--model.d_ff", "65536",
                "--model.d_model", "4096"});
  INFO(e);
  CHECK_THAT(e, Contains("the model's parameters"));
  CHECK_THAT(e, Contains("model.n_layers"));
  e = error_of({"--model.vocab_size", "4194304", "--train.batch_rows", "16777216", "--model.seq_len", "16"});
  INFO(e);
  CHECK_THAT(e, Contains("logits of a batch"));
  // The tokens of a batch no longer wrap: 2^63-1 stops at the key's own bound.
  CHECK_THAT(error_of({"--model.seq_len", kHuge}), Contains("model.seq_len must be at most 1048576, got " + kHuge));
}

TEST_CASE("values: expert_capacity saturates at the group size") {
  using glam::cpu::expert_capacity;
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  CHECK(expert_capacity(512, inf, 8) == 512);
  CHECK(expert_capacity(512, 1e18, 8) == 512);
  CHECK(expert_capacity(512, nan, 8) == 512);
  CHECK(expert_capacity(18, 1e300, 2) == 20);   // capped at S = 18, rounded up to 20
  CHECK(expert_capacity(512, 8.0, 8) == 512);   // exactly S
  CHECK(expert_capacity(512, -inf, 8) == 4);    // below 1: the minimum
  CHECK(expert_capacity(int64_t{1} << 40, 1e18, 2) == int64_t{1} << 40);
  // the ordinary cases keep int(S * cf / E)
  CHECK(expert_capacity(512, 2.0, 8) == 128);
  CHECK(expert_capacity(1024, 1.25, 64) == 20);
}

TEST_CASE("values: a huge capacity factor drops no routing choice") {
  using namespace glam::cpu;
  const int64_t E = 4, T = 64;
  std::vector<float> logits(T * E);
  for (int64_t t = 0; t < T; t++)
    for (int64_t e = 0; e < E; e++) logits[t * E + e] = e == 0 ? 4.0f : e == 1 ? 2.0f : 0.0f;  // all on 0 and 1
  for (double cf : {4.0, 1e18, std::numeric_limits<double>::infinity()}) {
    RouterOptions o;
    o.n_experts = E;
    o.group_size = T;
    o.capacity_factor = cf;
    RoutingPlan p;
    router_forward(p, logits.data(), T, o);
    INFO("capacity_factor " << cf << ": capacity " << p.capacity << ", dropped " << p.dropped);
    CHECK(p.capacity == T);
    CHECK(p.dropped == 0);
  }
}

TEST_CASE("values: meshes are parsed strictly") {
  int d = 0, m = 0;
  glam::parse_mesh("2x3", "--mesh", &d, &m);
  CHECK((d == 2 && m == 3));
  glam::parse_mesh("1048576x1", "--mesh", &d, &m);
  CHECK(d == 1048576);
  const char* bad[] = {"4294967297x1", "1x4294967297", "-1x2", "2x-1", "+2x2", " 2x2", "2x2 ", "2 x2", "2x2x2",
                       "2x2junk", "0x1", "1x0", "2x", "x2", "x", "", "2", "2X2", "99999999999999999999x1",
                       "1048577x1", "4096x4096x", "0x10x1", "1e3x1", "2.0x1"};
  for (const char* s : bad) {
    INFO("'" << s << "'");
    try {
      glam::parse_mesh(s, "--mesh", &d, &m);
      FAIL("accepted");
    } catch (const glam::UserError& e) {
      CHECK_THAT(std::string(e.what()), Contains("--mesh"));
    }
  }
  CHECK_THROWS_AS(glam::parse_mesh("8192x8192", "--mesh", &d, &m), glam::UserError);  // 2^26 ranks
  CHECK_THROWS_AS(glam::parse_mesh_shape("4294967297x1", "--mesh", &d, &m), glam::UserError);
  CHECK_THAT(error_of({"--mesh", "4294967297x1"}), Contains("--mesh: expected DxM"));
  CHECK(error_of({"--mesh", "2x2"}) == "<no error>");
}

TEST_CASE("values: stray positional arguments are refused") {
  CHECK_THAT(error_of({"--run-dir", "r", "extra"}), Contains("unexpected argument 'extra'"));
  CHECK_THAT(error_of({"stray", "--run-dir", "r"}), Contains("unexpected argument 'stray'"));
  CHECK_THAT(error_of({"--model.d_model", "64", "128"}), Contains("unexpected argument '128'"));
  CHECK(error_of({"--run-dir", "r", "--model.d_model", "64"}) == "<no error>");
}

TEST_CASE("values: parse_bytes stays inside int64") {
  CHECK(glam::parse_bytes("80GiB", "--device-memory") == int64_t{80} << 30);
  for (const char* bad : {"1e30GiB", "1e300", "inf", "nan", " 8GiB", "-1GiB", "0", "0.5B", "8 GiB"}) {
    INFO(bad);
    CHECK_THROWS_AS(glam::parse_bytes(bad, "--device-memory"), glam::UserError);
  }
}

TEST_CASE("values: checked arithmetic and the activity") {
  int64_t out = 0;
  CHECK(glam::checked_mul(8, int64_t{1} << 59, &out));
  CHECK_FALSE(glam::checked_mul(8, std::numeric_limits<int64_t>::max(), &out));
  CHECK_FALSE(glam::checked_add(std::numeric_limits<int64_t>::max(), 1, &out));
  {
    glam::Activity a("loading");
    CHECK(glam::current_activity() == "loading");
    {
      glam::Activity b("generating");
      CHECK(glam::current_activity() == "generating");
    }
    CHECK(glam::current_activity() == "loading");
  }
  CHECK(glam::current_activity().empty());
}
