// Command-line helpers shared by the glam commands and tools: the top level of a
// tool (usage, help, version, no or unknown command) in one layout, the wording
// of --overwrite and of defaults in --help, options parsed with every stray
// positional argument refused, strict "DxM" meshes, checked int64 products, and
// the activity that main() names when memory runs out.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "glam/base/check.h"

namespace glam {

// ---- the top level of glam, glam-tokenize and glam-ckpt ----

struct ToolCommand {
  std::string name;     // "train"
  std::string summary;  // what it does, perhaps with an example
  // The command's main: its arguments after the command's name; returns the exit
  // status (tool_main.h runs it; tool_usage reads only the two lines above).
  std::function<int(const std::vector<std::string>& args)> run;
};

// The usage every tool prints, in one layout:
//   usage: <tool> <command> [options]
//   commands:
//     <name>    <summary>            (one line each, then `version`)
//   '<tool> <command> --help' lists the options of a command.
std::string tool_usage(const std::string& tool, const std::vector<ToolCommand>& commands);

// The words a tool takes instead of a command. help, --help, -h print the usage
// on stdout; version, --version print version_string(tool) (glam/base/version.h).
// Returns true when it printed one of them (the tool then exits 0). No command
// at all throws UserError("no command given\n" + usage).
bool top_level_request(const std::string& tool, const std::string& usage, int argc, char** argv);

// The error for a command the tool does not have: "unknown command 'x'" + usage.
UserError unknown_command(const std::string& command, const std::string& usage);

// The help of every --overwrite: "replace an existing <what>".
std::string overwrite_help(const std::string& what);
// How an "already exists" error ends.
constexpr const char* kOverwriteHint = "pass --overwrite to replace it";

// A double option whose default --help prints as written in the code (0.8), not
// in Boost's 17 digits (0.80000000000000004): po::value(target) defaulting to *target.
boost::program_options::typed_value<double>* real_value(double* target);
// The shortest text that reads back as v ("0.8", "1", "1e-30").
std::string shortest_text(double v);

// Largest mesh axis and mesh accepted anywhere (far beyond any cluster; keeps
// D * M and every per-rank count inside int).
constexpr int kMaxMeshAxis = 1 << 20;
constexpr int64_t kMaxMeshRanks = int64_t{1} << 24;

// The options of one command of a tool, `positional` naming its positional
// arguments: with --help prints "usage: <tool_command> <synopsis>" and the options
// and returns false; else stores and checks them in vm (po::error escapes).
bool parse_command_options(const std::vector<std::string>& args, const std::string& tool_command,
                           const std::string& synopsis, const boost::program_options::options_description& options,
                           const boost::program_options::positional_options_description& positional,
                           boost::program_options::variables_map& vm);

// Runs Boost's command-line parser on args against desc. Boost silently drops
// arguments that are not options; here each one throws UserError naming it and
// `command` ("glam eval"). po::error still escapes for the caller to wrap.
boost::program_options::parsed_options parse_command_line(const std::vector<std::string>& args,
                                                          const boost::program_options::options_description& desc,
                                                          const std::string& command);

// The options of a glam command (`command`: "glam eval"): parse_command_line and
// po::notify into vm, a Boost option error rethrown as UserError("<command>: ...");
// with --help prints desc and returns false.
bool parse_glam_command(const std::vector<std::string>& args, const boost::program_options::options_description& desc,
                        const std::string& command, boost::program_options::variables_map& vm);

// "DxM" -> D, M: two decimal integers from 1 to kMaxMeshAxis joined by 'x', with
// D * M <= kMaxMeshRanks; no sign, space, leading '+', or trailing junk. Anything
// else throws UserError naming `flag`.
void parse_mesh(const std::string& shape, const std::string& flag, int* data, int* model);

// a * b, or false when it does not fit in int64 (both >= 0).
bool checked_mul(int64_t a, int64_t b, int64_t* out);
bool checked_add(int64_t a, int64_t b, int64_t* out);

// Physical memory of this machine in bytes (0 when unknown).
int64_t host_memory_bytes();

// What the process is doing, for the message main() prints on std::bad_alloc.
// An Activity sets it for its lifetime and restores the previous one.
const std::string& current_activity();
class Activity {
 public:
  explicit Activity(std::string what);
  ~Activity();
  Activity(const Activity&) = delete;
  Activity& operator=(const Activity&) = delete;

 private:
  std::string previous_;
};

}  // namespace glam
