// Command-line helpers (include/glam/base/cli.h).
#include "glam/base/cli.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iostream>

#include "glam/base/check.h"
#include "glam/base/version.h"

namespace po = boost::program_options;

namespace glam {

std::string tool_usage(const std::string& tool, const std::vector<ToolCommand>& commands) {
  std::vector<ToolCommand> all = commands;
  all.push_back({"version", "print the version and the git commit of this build", nullptr});
  size_t width = 0;
  for (const ToolCommand& c : all) width = std::max(width, c.name.size());
  std::string out = "usage: " + tool + " <command> [options]\ncommands:\n";
  for (const ToolCommand& c : all) out += "  " + c.name + std::string(width + 2 - c.name.size(), ' ') + c.summary + "\n";
  return out + "'" + tool + " <command> --help' lists the options of a command.\n";
}

bool top_level_request(const std::string& tool, const std::string& usage, int argc, char** argv) {
  if (argc < 2) throw UserError("no command given\n" + usage);
  const std::string word = argv[1];
  if (word == "help" || word == "--help" || word == "-h") {
    std::fputs(usage.c_str(), stdout);
    return true;
  }
  if (word == "version" || word == "--version") {
    std::printf("%s\n", version_string(tool).c_str());
    return true;
  }
  return false;
}

UserError unknown_command(const std::string& command, const std::string& usage) {
  return UserError(msg("unknown command '", command, "'\n", usage));
}

std::string overwrite_help(const std::string& what) { return "replace an existing " + what; }

std::string shortest_text(double v) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::to_string(v);
}

po::typed_value<double>* real_value(double* target) {
  return po::value(target)->default_value(*target, shortest_text(*target));
}

bool parse_command_options(const std::vector<std::string>& args, const std::string& tool_command,
                           const std::string& synopsis, const po::options_description& options,
                           const po::positional_options_description& positional, po::variables_map& vm) {
  po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: " << tool_command << " " << synopsis << "\n" << options;
    return false;
  }
  po::notify(vm);
  return true;
}

po::parsed_options parse_command_line(const std::vector<std::string>& args, const po::options_description& desc,
                                      const std::string& command) {
  po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
  for (const po::option& o : parsed.options) {
    if (o.position_key < 0 && !o.string_key.empty()) continue;
    const std::string arg = o.original_tokens.empty() ? (o.value.empty() ? "" : o.value[0]) : o.original_tokens[0];
    throw UserError(msg(command, ": unexpected argument '", arg,
                        "' (every option is --name VALUE; quote a value that holds spaces)"));
  }
  return parsed;
}

bool parse_glam_command(const std::vector<std::string>& args, const po::options_description& desc,
                        const std::string& command, po::variables_map& vm) {
  try {
    po::store(parse_command_line(args, desc, command), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UserError(msg(command, ": ", e.what()));
  }
  if (!vm.count("help")) return true;
  std::cout << desc << "\n";
  return false;
}

namespace {

// A decimal integer in [1, kMaxMeshAxis] covering all of text, or 0.
int mesh_axis(const std::string& text) {
  if (text.empty() || text[0] < '0' || text[0] > '9') return 0;  // from_chars takes '-'
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < 1 || v > kMaxMeshAxis) return 0;
  return static_cast<int>(v);
}

}  // namespace

void parse_mesh(const std::string& shape, const std::string& flag, int* data, int* model) {
  const size_t x = shape.find('x');
  const int d = x == std::string::npos ? 0 : mesh_axis(shape.substr(0, x));
  const int m = x == std::string::npos ? 0 : mesh_axis(shape.substr(x + 1));
  GLAM_REQUIRE(d > 0 && m > 0, flag, ": expected DxM with positive integers (e.g. 2x2), got '", shape,
               "' (D and M from 1 to ", kMaxMeshAxis, ", digits only)");
  GLAM_REQUIRE(int64_t{d} * m <= kMaxMeshRanks, flag, " ", shape, ": ", int64_t{d} * m,
               " ranks is more than the ", kMaxMeshRanks, " glam supports");
  *data = d;
  *model = m;
}

bool checked_mul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool checked_add(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }

int64_t host_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  int64_t bytes = 0;
  return pages > 0 && page > 0 && checked_mul(pages, page, &bytes) ? bytes : 0;
}

namespace {
std::string& activity_slot() {
  static std::string what;
  return what;
}
}  // namespace

const std::string& current_activity() { return activity_slot(); }

Activity::Activity(std::string what) : previous_(std::move(activity_slot())) { activity_slot() = std::move(what); }
Activity::~Activity() { activity_slot() = std::move(previous_); }

}  // namespace glam
