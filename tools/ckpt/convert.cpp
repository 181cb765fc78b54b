// glam-ckpt convert: a checkpoint in another format version (only version 1
// exists: it is copied unchanged).
#include <cinttypes>
#include <cstdio>
#include <filesystem>

#include "ckpt.h"

namespace fs = std::filesystem;

namespace glam::ckpt {

int convert(const std::vector<std::string>& args) {
  po::options_description opt("convert options");
  add_command_options(opt);
  // clang-format off
  opt.add_options()
      ("to-version", po::value<int64_t>()->required(), "the format version to write (only 1 exists)")
      ("output", po::value<std::string>()->required(), "the file to write")
      ("overwrite", po::bool_switch(), "replace an existing output file");
  // clang-format on
  po::variables_map vm;
  if (!parse_options(args, "convert", "CKPT --to-version V --output OUT [--overwrite]", opt, vm)) return 0;
  const Team& team = Team::world();
  team.agree([&] {  // rank 0 alone under mpirun; its errors end every rank
    if (!team.root()) return;
    const std::string path = vm["checkpoint"].as<std::string>(), out = vm["output"].as<std::string>();
    const int64_t to = vm["to-version"].as<int64_t>();
    Checkpoint c = open_checkpoint(path, false);
    GLAM_REQUIRE(to == c.version, "no converter from version ", c.version, " to ", to, " (known versions: ",
                 kCheckpointVersion, ")");
    require_output(out, vm["overwrite"].as<bool>());
    c.file.close();
    TmpFile tmp(out + ".tmp");
    std::error_code ec;
    fs::copy_file(path, tmp.path, fs::copy_options::overwrite_existing, ec);
    GLAM_REQUIRE(!ec, "cannot copy '", path, "' to '", tmp.path, "': ", ec.message());
    tmp.commit(out);
    std::printf("'%s' is version %" PRId64 " already (the current version): copied unchanged to '%s'\n", path.c_str(),
                c.version, out.c_str());
  });
  return 0;
}

}  // namespace glam::ckpt
