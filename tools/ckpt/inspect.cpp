// glam-ckpt inspect: the training state, the config and every dataset of a checkpoint.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "ckpt.h"

namespace glam::ckpt {

namespace {

void print_state(const Checkpoint& c) {
  const hid_t f = c.file.get();
  auto i64 = [&](const char* name) {
    const auto v = h5::read_int_attr(f, name);
    return v ? std::to_string(*v) : std::string("(missing)");
  };
  const auto seed = h5::read_u64_attr(f, "seed");
  const auto mesh = h5::read_string_attr(f, "mesh", kMaxConfigBytes);
  std::printf("checkpoint     %s\n", c.path.c_str());
  std::printf("format         %s, version %" PRId64 "\n", c.format.c_str(), c.version);
  std::printf("step           %s\n", i64("step").c_str());
  std::printf("updates        %s\n", i64("updates").c_str());
  std::printf("skipped        %s\n", i64("skipped_total").c_str());
  std::printf("data_next_row  %s\n", i64("data_next_row").c_str());
  std::printf("seed           %s\n", seed ? std::to_string(*seed).c_str() : "(missing)");
  std::printf("mesh           %s (written on; any mesh can read it)\n", mesh ? mesh->c_str() : "(missing)");
  std::printf("file size      %s MB\n", mb(static_cast<int64_t>(std::filesystem::file_size(c.path))).c_str());
  std::printf("\nconfig:\n");
  std::istringstream ini(c.config_ini);
  for (std::string line; std::getline(ini, line);) std::printf("%s%s\n", line.empty() ? "" : "  ", line.c_str());
}

void print_datasets(const Checkpoint& c) {
  const auto list = list_datasets(c.file.get(), c.path);
  size_t width = 4;
  for (const auto& d : list) width = std::max(width, d.path.size());
  std::printf("\ndatasets:\n  %-*s  %-16s  %-8s  %10s\n", static_cast<int>(width), "path", "shape", "dtype", "MB");
  int64_t n_params = 0, n_opt = 0, bytes = 0, ds_params = 0, ds_opt = 0;
  for (const auto& d : list) {
    std::printf("  %-*s  %-16s  %-8s  %10s\n", static_cast<int>(width), d.path.c_str(), shape_str(d.shape).c_str(),
                d.dtype.c_str(), mb(d.bytes).c_str());
    if (d.path.rfind("/params/", 0) == 0) { n_params += product(d.shape); ds_params++; }
    if (d.path.rfind("/optimizer/", 0) == 0) { n_opt += product(d.shape); ds_opt++; }
    bytes += d.bytes;
  }
  std::printf("\ntotals: %" PRId64 " parameters in %" PRId64 " datasets, %" PRId64
              " optimizer-state values in %" PRId64 " datasets, %zu datasets, %s MB of tensor data\n",
              n_params, ds_params, n_opt, ds_opt, list.size(), mb(bytes).c_str());
}

}  // namespace

int inspect(const std::vector<std::string>& args) {
  po::options_description opt("inspect options");
  add_command_options(opt);
  po::variables_map vm;
  if (!parse_options(args, "inspect", "CKPT", opt, vm)) return 0;
  const Team& team = Team::world();
  team.agree([&] {  // rank 0 alone under mpirun; its errors end every rank
    if (!team.root()) return;
    const Checkpoint c = open_checkpoint(vm["checkpoint"].as<std::string>(), false);
    print_state(c);
    print_datasets(c);
  });
  return 0;
}

}  // namespace glam::ckpt
