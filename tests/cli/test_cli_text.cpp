// The text the tools share: one-line JSON records (json_line.h), the top-level
// usage and the defaults in --help (cli.h), the version (version.h), and the one
// splitmix64 (hash.h) whose numbers must not move.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <sstream>

#include "glam/base/cli.h"
#include "glam/base/hash.h"
#include "glam/io/json_line.h"
#include "glam/base/version.h"

namespace po = boost::program_options;
using nlohmann::ordered_json;

TEST_CASE("json_line keeps the members' order and the records' layout") {
  const ordered_json j = {{"step", 3}, {"loss", 2.5}, {"skipped", false}, {"load", {{1, 2}, {3}}}};
  CHECK(glam::json_line(j, 8) == R"({"step": 3, "loss": 2.5, "skipped": false, "load": [[1, 2], [3]]})");
}

TEST_CASE("json_line writes numbers with the given digits and non-finite ones as null") {
  const ordered_json j = {{"a", 1.0 / 3.0}, {"b", std::nan("")}, {"c", -INFINITY}, {"d", int64_t{1} << 40}};
  CHECK(glam::json_line(j, 8) == R"({"a": 0.33333333, "b": null, "c": null, "d": 1099511627776})");
  CHECK(glam::json_line(ordered_json{{"x", 0.1234567891234}}, 10) == R"({"x": 0.1234567891})");
}

TEST_CASE("json_line escapes strings through nlohmann") {
  const ordered_json j = {{"na\"me", "a\\b\n\x01"}};
  const std::string line = glam::json_line(j, 8);
  CHECK(line == R"({"na\"me": "a\\b\n\u0001"})");
  CHECK(ordered_json::parse(line) == j);
  CHECK(glam::json_line(ordered_json("bad \xff utf-8"), 8) == "\"bad \xef\xbf\xbd utf-8\"");
}

TEST_CASE("every tool's usage has one layout, with version among the commands") {
  const std::string u = glam::tool_usage("glam-x", {{"a", "does a", nullptr}, {"long-one", "does b", nullptr}});
  CHECK(u == "usage: glam-x <command> [options]\n"
             "commands:\n"
             "  a         does a\n"
             "  long-one  does b\n"
             "  version   print the version and the git commit of this build\n"
             "'glam-x <command> --help' lists the options of a command.\n");
  char tool[] = "glam-x";
  char* no_args[] = {tool, nullptr};
  try {
    glam::top_level_request("glam-x", u, 1, no_args);
    FAIL("no command was accepted");
  } catch (const glam::UserError& e) {
    CHECK(std::string(e.what()) == "no command given\n" + u);
  }
  CHECK(std::string(glam::unknown_command("frob", u).what()) == "unknown command 'frob'\n" + u);
  char train[] = "train";
  char* with_command[] = {tool, train, nullptr};
  CHECK_FALSE(glam::top_level_request("glam-x", u, 2, with_command));
}

TEST_CASE("version_string names the tool, the project version and the commit") {
  const std::string v = glam::version_string("glam-x");
  CHECK(v == std::string("glam-x ") + glam::project_version() + " (git " + glam::git_commit() + ")");
  CHECK(std::string(glam::project_version()).find('.') != std::string::npos);
  CHECK_FALSE(std::string(glam::git_commit()).empty());
  const ordered_json b = ordered_json::parse(glam::build_json());
  CHECK(b["glam_version"] == glam::project_version());
  CHECK(b["git_commit"] == glam::git_commit());
}

TEST_CASE("--help prints a default as it is written") {
  CHECK(glam::shortest_text(0.8) == "0.8");
  CHECK(glam::shortest_text(1.0) == "1");
  CHECK(glam::shortest_text(1e-30) == "1e-30");
  double decay = 0.8;
  po::options_description d;
  d.add_options()("decay", glam::real_value(&decay), "decay");
  std::ostringstream os;
  os << d;
  CHECK(os.str().find("(=0.8)") != std::string::npos);
  CHECK(glam::overwrite_help("output file") == "replace an existing output file");
}

TEST_CASE("splitmix64 gives the published sequence and the draws built on it") {
  // The first outputs of the reference SplitMix64 seeded with 0.
  CHECK(glam::splitmix64_at(0, 0) == 0xe220a8397b1dcdafULL);
  CHECK(glam::splitmix64_at(0, 1) == 0x6e789e6aa1b965f4ULL);
  CHECK(glam::splitmix64(12345) == glam::splitmix64_at(12345, 0));
  CHECK(glam::splitmix64(7) == glam::mix64(7 + glam::kSplitmixGamma));
  CHECK(glam::unit_interval(0) == 0.0);
  CHECK(glam::unit_interval(~uint64_t{0}) < 1.0);
  CHECK(glam::open_unit_interval(0) > 0.0);
  CHECK(glam::open_unit_interval(~uint64_t{0}) == 1.0);  // rounds up: (0, 1]
}
