// `glam generate`: load a run dir's config, tokenizer and weights, then continue
// prompts with the KV-cache generator: greedy, temperature / top-k / top-p
// sampling or beam search, stop strings, on any mesh.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/mesh/device.h"
#include "glam/mesh/host_memory.h"
#include "glam/commands/commands.h"
#include "glam/model/generator.h"
#include "glam/checkpoint/weights.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace glam {

namespace {

po::options_description generate_options() {
  po::options_description cli("glam generate --run-dir DIR --prompt TEXT [options]");
  cli.add_options()
    ("help,h", "show this help")
    ("run-dir", po::value<std::string>(), "a run dir written by glam train")
    ("prompt", po::value<std::vector<std::string>>(), "text to continue (repeatable)")
    ("prompts", po::value<std::string>(), "file with one prompt per line")
    ("max-tokens", po::value<int64_t>()->default_value(64), "tokens to generate")
    ("temperature", po::value<double>()->default_value(0.0), "sampling temperature (0 = greedy)")
    ("top-k", po::value<int64_t>()->default_value(0), "sample among the k most likely tokens (0 = all)")
    ("top-p", po::value<double>()->default_value(1.0), "nucleus sampling: smallest set with this probability")
    ("beam", po::value<int64_t>()->default_value(1), "beam width (GLaM used 4); > 1 ignores sampling")
    ("stop", po::value<std::vector<std::string>>(), "stop string (repeatable)")
    ("seed", po::value<Seed>()->default_value(Seed(1)), "sampling seed (0 to 2^64-1)")
    ("mesh", po::value<std::string>()->default_value(""), "device mesh DxM (default: every rank on data)")
    ("device", po::value<std::string>()->default_value("auto"), "auto | cpu | cuda (auto: cuda when a GPU is visible)");
  return cli;
}

std::vector<std::string> read_prompts(const po::variables_map& vm) {
  std::vector<std::string> prompts;
  if (vm.count("prompt")) prompts = vm["prompt"].as<std::vector<std::string>>();
  if (vm.count("prompts")) {
    const std::string path = vm["prompts"].as<std::string>();
    std::ifstream in(path);
    GLAM_REQUIRE(in, "cannot open prompts file '", path, "'");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) prompts.push_back(line);
  }
  GLAM_REQUIRE(!prompts.empty(), "glam generate: give --prompt TEXT (repeatable) or --prompts FILE (one per line)");
  return prompts;
}

// The sampling flags, checked before anything is loaded.
SamplingOptions sampling_options(const po::variables_map& vm) {
  SamplingOptions opt;
  opt.max_tokens = vm["max-tokens"].as<int64_t>();
  opt.temperature = vm["temperature"].as<double>();
  opt.top_k = vm["top-k"].as<int64_t>();
  opt.top_p = vm["top-p"].as<double>();
  opt.beam = vm["beam"].as<int64_t>();
  opt.seed = vm["seed"].as<Seed>();
  if (vm.count("stop")) opt.stop = vm["stop"].as<std::vector<std::string>>();
  check_sampling_options(opt);
  return opt;
}

}  // namespace

int generate_main(const std::vector<std::string>& args) {
  const po::options_description cli = generate_options();
  po::variables_map vm;
  if (!parse_glam_command(args, cli, "glam generate", vm)) return 0;  // --help
  GLAM_REQUIRE(vm.count("run-dir"), "glam generate: --run-dir is required");
  const std::vector<std::string> prompts = read_prompts(vm);
  const SamplingOptions opt = sampling_options(vm);
  const std::string mesh_shape = vm["mesh"].as<std::string>();
  int mesh_d = 0, mesh_m = 0;
  if (!mesh_shape.empty()) parse_mesh(mesh_shape, "--mesh", &mesh_d, &mesh_m);
  const fs::path dir = vm["run-dir"].as<std::string>();
  GLAM_REQUIRE(fs::exists(dir / "config.cfg"), "run dir '", dir.string(), "' has no config.cfg (was it written by glam train?)");

  Config cfg = load_config_file((dir / "config.cfg").string());
  Activity loading(msg("loading the model of run dir '", dir.string(), "'"));
  Mesh mesh = Mesh::create(mesh_shape);
  const Device device = select_device(vm["device"].as<std::string>(), mesh);
  if (device == Device::cpu) require_fits_host_memory(cfg, mesh, MemoryUse::inference, "glam generate");
  Tokenizer tokenizer((dir / "tokenizer.model").string());
  Model model(cfg, mesh, device);
  load_weights((dir / "weights.h5").string(), model.params(), mesh);
  model.sync_to_device();
  Generator generator(model, tokenizer, mesh);

  std::vector<std::vector<int32_t>> ids;
  for (const std::string& p : prompts) ids.push_back(tokenizer.encode(p));
  Activity generating(msg("generating with --beam ", opt.beam, " and --max-tokens ", opt.max_tokens));
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<Generation> out = generator.generate(ids, opt);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t n_tokens = 0;
  for (size_t i = 0; i < out.size(); i++) {
    n_tokens += static_cast<int64_t>(out[i].tokens.size());
    if (mesh.is_root()) std::printf("%s%s\n", prompts[i].c_str(), out[i].text.c_str());
  }
  if (mesh.is_root())
    std::fprintf(stderr, "# %lld tokens generated in %.2fs (%.1f tokens/s)\n", static_cast<long long>(n_tokens), secs,
                 n_tokens / std::max(secs, 1e-9));
  return 0;
}

}  // namespace glam
