// glam-ckpt: the options every command parses (--memory-limit among them) and the
// output files it writes (through a temporary name, renamed into place when complete).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
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
  if (Team::world().root())
    return glam::parse_command_options(args, "glam-ckpt " + command, synopsis, options, positional, vm);
  // The other ranks of mpirun parse the same arguments and print nothing.
  po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
  if (vm.count("help")) return false;
  po::notify(vm);
  return true;
}

void add_memory_options(po::options_description& opt) {
  // clang-format off
  opt.add_options()
      ("memory-limit", po::value<std::string>()->default_value("1GiB"),
       "the most tensor data each rank holds at once (e.g. 512MiB, 8GiB, or bytes); larger tensors "
       "are read in blocks of rows")
      ("chunk-bytes", po::value<int64_t>()->default_value(kDefaultChunkBytes),
       "preferred bytes per read: whole leading-dim slices, at least one unless that is over --memory-limit");
  // clang-format on
}

MemoryOptions memory_options(const po::variables_map& vm) {
  MemoryOptions m;
  m.limit = parse_size(vm["memory-limit"].as<std::string>(), "--memory-limit");
  GLAM_REQUIRE(m.limit >= kMinMemoryLimit, "--memory-limit must be at least 4KiB (", kMinMemoryLimit,
               " bytes), not '", vm["memory-limit"].as<std::string>(), "'");
  m.chunk = vm["chunk-bytes"].as<int64_t>();
  GLAM_REQUIRE(m.chunk > 0, "--chunk-bytes must be positive, got ", m.chunk);
  return m;
}

namespace {

// The bytes of a unit (case ignored), 0 for none known.
double unit_bytes(std::string unit) {
  for (char& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const char* prefixes = "kmgt";
  if (unit.empty() || unit == "b") return 1;
  const char* p = std::strchr(prefixes, unit[0]);
  if (p == nullptr || *p == '\0') return 0;
  const int power = static_cast<int>(p - prefixes) + 1;
  const std::string rest = unit.substr(1);
  if (rest.empty() || rest == "ib") return std::pow(1024.0, power);
  if (rest == "b") return std::pow(1000.0, power);
  return 0;
}

}  // namespace

int64_t parse_size(const std::string& text, const std::string& flag) {
  const std::string bad = msg(flag, " must be a size such as 512MiB, 8GiB or 1073741824 (bytes), not '", text, "'");
  const size_t digits = text.find_first_not_of("0123456789.");
  const std::string number = text.substr(0, digits), unit = digits == std::string::npos ? "" : text.substr(digits);
  GLAM_REQUIRE(!number.empty() && number.find_first_of("0123456789") != std::string::npos &&
                   std::count(number.begin(), number.end(), '.') <= 1 && number.size() <= 30,
               bad);
  const double scale = unit_bytes(unit);
  GLAM_REQUIRE(scale > 0, bad);
  if (number.find('.') == std::string::npos && scale == 1) {  // plain bytes: exactly
    GLAM_REQUIRE(number.size() <= 18, flag, " of '", text, "' is too large");
    return std::stoll(number);
  }
  const double bytes = std::floor(std::stod(number) * scale);
  GLAM_REQUIRE(bytes < 9.2e18, flag, " of '", text, "' is too large");
  return static_cast<int64_t>(bytes);
}

void require_output(const std::string& path, bool overwrite) {
  GLAM_REQUIRE(!fs::exists(path) || overwrite, "output file '", path, "' already exists (use --overwrite)");
  GLAM_REQUIRE(!fs::is_directory(path), "output '", path, "' is a directory");
  const fs::path parent = fs::path(path).parent_path();
  GLAM_REQUIRE(parent.empty() || fs::is_directory(parent), "directory '", parent.string(), "' for the output '",
               path, "' does not exist");
}

TmpFile::~TmpFile() {
  std::error_code ec;  // a directory in the way of the temporary name is the user's, not ours
  if (!committed && !fs::is_directory(path, ec)) fs::remove(path, ec);
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

void write_checksum_attrs(const std::vector<CheckpointDataset>& datasets, const uint64_t* sums, const char* name,
                          const std::string& file) {
  h5::File f(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  GLAM_REQUIRE(f.valid(), "cannot reopen '", file, "' to write its checksums");
  for (size_t i = 0; i < datasets.size(); i++) {
    const h5::Dataset ds(GLAM_REQUIRE_H5(H5Dopen2(f.get(), datasets[i].path.c_str(), H5P_DEFAULT),
                                         "cannot open dataset ", datasets[i].path, " of '", file, "'"));
    attr_written(h5::write_u64_attr(ds.get(), name, sums[i]), name, file);
  }
  GLAM_REQUIRE(H5Fflush(f.get(), H5F_SCOPE_GLOBAL) >= 0 && f.close() >= 0, "cannot write '", file, "'");
}

}  // namespace glam::ckpt
