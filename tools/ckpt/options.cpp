// glam-ckpt: the options every command parses and the output files it writes
// (through a temporary name, renamed into place when complete).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "ckpt.h"
#include "glam/base/cli.h"

namespace fs = std::filesystem;

namespace glam::ckpt {

namespace {
constexpr int64_t kDefaultChunkBytes = 64 << 20;
}  // namespace

void add_command_options(po::options_description& opt, const char* file_help) {
  opt.add_options()("help,h", "show this help")("checkpoint", po::value<std::string>()->required(), file_help);
}

bool parse_options(const std::vector<std::string>& args, const std::string& command, const std::string& synopsis,
                   const po::options_description& options, po::variables_map& vm) {
  po::positional_options_description positional;
  positional.add("checkpoint", 1);
  return glam::parse_command_options(args, "glam-ckpt " + command, synopsis, options, positional, vm);
}

void add_chunk_option(po::options_description& opt) {
  opt.add_options()("chunk-bytes", po::value<int64_t>()->default_value(kDefaultChunkBytes),
                    "read tensors in slabs of at most this many bytes (whole leading-dim slices)");
}

int64_t chunk_bytes(const po::variables_map& vm) {
  const int64_t b = vm["chunk-bytes"].as<int64_t>();
  GLAM_REQUIRE(b > 0, "--chunk-bytes must be positive, got ", b);
  return b;
}

void require_output(const std::string& path, bool overwrite) {
  GLAM_REQUIRE(!fs::exists(path) || overwrite, "output file '", path, "' already exists (use --overwrite)");
  GLAM_REQUIRE(!fs::is_directory(path), "output '", path, "' is a directory");
  const fs::path parent = fs::path(path).parent_path();
  GLAM_REQUIRE(parent.empty() || fs::is_directory(parent), "directory '", parent.string(), "' for the output '",
               path, "' does not exist");
}

TmpFile::~TmpFile() {
  std::error_code ec;
  if (!committed) fs::remove(path, ec);
}

void TmpFile::commit(const std::string& to) {
  fs::rename(path, to);
  committed = true;
}

void write_text_file(const std::string& path, const std::string& text, bool overwrite) {
  require_output(path, overwrite);
  TmpFile tmp(path + ".tmp");
  {
    std::ofstream out(tmp.path, std::ios::binary | std::ios::trunc);
    GLAM_REQUIRE(out, "cannot create '", tmp.path, "'");
    out << text;
    out.flush();
    GLAM_REQUIRE(out, "cannot write '", tmp.path, "'");
  }
  tmp.commit(path);
}

std::string mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(bytes) / 1e6);
  return buf;
}

void attr_written(herr_t rc, const char* name, const std::string& file) {
  GLAM_REQUIRE(rc >= 0, "cannot write attribute ", name, " to '", file, "'");
}

}  // namespace glam::ckpt
