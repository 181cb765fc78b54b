// `glam generate`: load a run dir's config, tokenizer and weights, then extend a
// prompt token by token (full recompute per token; the KV cache comes later) with
// greedy decoding or temperature / top-k sampling.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <random>

#include "glam/check.h"
#include "glam/commands.h"
#include "glam/model.h"
#include "glam/tokenizer.h"
#include "glam/weights.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace glam {

namespace {

struct SamplerOptions {
  double temperature = 0.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = whole vocabulary
};

int32_t sample(const float* logits, int64_t V, const SamplerOptions& opt, std::mt19937_64& rng) {
  if (opt.temperature <= 0.0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = opt.top_k > 0 ? std::min(opt.top_k, V) : V;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(k);
  for (int64_t i = 0; i < k; i++) p[i] = std::exp((logits[order[i]] - logits[order[0]]) / opt.temperature);
  std::discrete_distribution<int64_t> pick(p.begin(), p.end());
  return order[pick(rng)];
}

}  // namespace

int generate_main(const std::vector<std::string>& args) {
  po::options_description cli("glam generate --run-dir DIR --prompt TEXT [options]");
  cli.add_options()
    ("help,h", "show this help")
    ("run-dir", po::value<std::string>(), "a run dir written by glam train")
    ("prompt", po::value<std::string>(), "text to continue")
    ("max-tokens", po::value<int64_t>()->default_value(64), "tokens to generate")
    ("temperature", po::value<double>()->default_value(0.0), "sampling temperature (0 = greedy)")
    ("top-k", po::value<int64_t>()->default_value(0), "sample among the k most likely tokens (0 = all)")
    ("seed", po::value<uint64_t>()->default_value(1), "sampling seed");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(cli).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UserError(msg("glam generate: ", e.what()));
  }
  if (vm.count("help")) { std::cout << cli << "\n"; return 0; }
  GLAM_REQUIRE(vm.count("run-dir"), "glam generate: --run-dir is required");
  GLAM_REQUIRE(vm.count("prompt"), "glam generate: --prompt is required");
  const fs::path dir = vm["run-dir"].as<std::string>();
  SamplerOptions opt{vm["temperature"].as<double>(), vm["top-k"].as<int64_t>()};
  GLAM_REQUIRE(opt.temperature >= 0.0, "--temperature must be >= 0");
  GLAM_REQUIRE(opt.top_k >= 0, "--top-k must be >= 0");
  const int64_t max_tokens = vm["max-tokens"].as<int64_t>();
  GLAM_REQUIRE(fs::exists(dir / "config.cfg"), "run dir '", dir.string(), "' has no config.cfg (was it written by glam train?)");

  Config cfg = load_config_file((dir / "config.cfg").string());
  Mesh mesh = Mesh::create("");
  GLAM_REQUIRE(mesh.world_size == 1, "glam generate runs on one rank for now");
  Tokenizer tokenizer((dir / "tokenizer.model").string());
  Model model(cfg, mesh);
  load_weights((dir / "weights.h5").string(), model.params(), mesh);

  std::vector<int32_t> ids = tokenizer.encode(vm["prompt"].as<std::string>());
  GLAM_REQUIRE(!ids.empty(), "--prompt encodes to no tokens");
  const size_t n_prompt = ids.size();
  std::mt19937_64 rng(vm["seed"].as<uint64_t>());
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t V = cfg.model.vocab_size;
  for (int64_t i = 0; i < max_tokens; i++) {
    const int64_t S = std::min<int64_t>(static_cast<int64_t>(ids.size()), cfg.model.seq_len);
    Batch b;
    b.rows = 1; b.seq_len = S;
    b.ids.assign(ids.end() - S, ids.end());
    b.targets.assign(S, -1);
    b.segments.assign(S, 0);
    model.forward(b, /*no_drop=*/true);
    const float* last = model.logits().data() + (S - 1) * V;
    int32_t next = sample(last, std::min<int64_t>(V, tokenizer.vocab_size()), opt, rng);
    if (next == tokenizer.eod_id()) break;
    ids.push_back(next);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s\n", tokenizer.decode(ids).c_str());
  std::fprintf(stderr, "# %zu tokens generated in %.2fs (%.1f tokens/s)\n", ids.size() - n_prompt, secs,
               (ids.size() - n_prompt) / std::max(secs, 1e-9));
  return 0;
}

}  // namespace glam
