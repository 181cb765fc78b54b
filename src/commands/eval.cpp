// `glam eval`: load a run dir, evaluate task files (multiple choice and generative,
// zero- or few-shot) and/or the perplexity of a text file; rank 0 prints a table
// and writes the JSON report. Task files are read before the model, so bad input
// fails before any work.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/model/generator.h"
#include "glam/mesh/device.h"
#include "glam/mesh/host_memory.h"
#include "glam/commands/commands.h"
#include "glam/eval/eval.h"
#include "glam/checkpoint/weights.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace glam {

namespace {

po::options_description eval_options() {
  std::string formats;
  for (const std::string& f : task_formats()) formats += (formats.empty() ? "" : ", ") + f;
  po::options_description cli("glam eval --run-dir DIR (--tasks PATH | --text FILE) [options]");
  cli.add_options()
    ("help,h", "show this help")
    ("run-dir", po::value<std::string>(), "a run dir written by glam train")
    ("tasks", po::value<std::string>(), "a task file NAME.jsonl or a directory of them")
    ("text", po::value<std::string>(), "held-out text: perplexity and bits per byte")
    ("format", po::value<std::string>()->default_value("glam"), ("field layout of the task files: " + formats).c_str())
    ("shots", po::value<int64_t>()->default_value(0), "demonstrations per example, from NAME.train.jsonl")
    ("seed", po::value<Seed>()->default_value(Seed(1)), "seed of the demonstrations' draw (0 to 2^64-1)")
    ("unnormalized", po::bool_switch(), "rank choices by the sum of log-probs, not the mean per token")
    ("beam", po::value<int64_t>()->default_value(4), "beam width of generative tasks")
    ("max-tokens", po::value<int64_t>()->default_value(32), "tokens generated per answer at most")
    ("limit", po::value<int64_t>()->default_value(0), "first N examples of each task (0: all)")
    ("json", po::value<std::string>(), "write the report as JSON to this file")
    ("predictions", po::value<std::string>(), "write every example's prediction as JSON Lines to this file")
    ("overwrite", po::bool_switch(), "replace an existing --json or --predictions file")
    ("mesh", po::value<std::string>()->default_value(""), "device mesh DxM (default: every rank on data)")
    ("device", po::value<std::string>()->default_value("auto"), "auto | cpu | cuda (auto: cuda when a GPU is visible)");
  return cli;
}

json task_json(const TaskResult& r) {
  json j = {{"task", r.name}, {"kind", kind_name(r.kind)}, {"format", r.format}, {"shots", r.shots}, {"n", r.n}};
  if (r.kind == TaskKind::multiple_choice) {
    j["accuracy"] = r.accuracy;
    j["chance"] = r.chance;
  } else {
    j["em"] = r.em;
    j["f1"] = r.f1;
  }
  return j;
}

void print_tasks(const std::vector<TaskResult>& results) {
  std::printf("%-20s %-16s %-12s %5s %6s %9s %7s %7s %7s\n", "task", "kind", "format", "shots", "n", "accuracy",
              "chance", "em", "f1");
  double sum = 0.0;
  for (const TaskResult& r : results) {
    if (r.kind == TaskKind::multiple_choice)
      std::printf("%-20s %-16s %-12s %5lld %6lld %9.4f %7.4f %7s %7s\n", r.name.c_str(), kind_name(r.kind),
                  r.format.c_str(), static_cast<long long>(r.shots), static_cast<long long>(r.n), r.accuracy, r.chance,
                  "-", "-");
    else
      std::printf("%-20s %-16s %-12s %5lld %6lld %9s %7s %7.4f %7.4f\n", r.name.c_str(), kind_name(r.kind),
                  r.format.c_str(), static_cast<long long>(r.shots), static_cast<long long>(r.n), "-", "-", r.em, r.f1);
    sum += r.score();
  }
  std::printf("average over %zu tasks: %.4f (accuracy for multiple choice, exact match for generative)\n",
              results.size(), sum / static_cast<double>(results.size()));
}

void print_text(const TextResult& t) {
  std::printf("text %s: %lld docs, %lld tokens scored, %lld bytes: nll/token %.4f, perplexity %.4f, bits per byte %.4f\n",
              t.path.c_str(), static_cast<long long>(t.n_docs), static_cast<long long>(t.n_tokens),
              static_cast<long long>(t.n_bytes), t.nll / static_cast<double>(std::max<int64_t>(1, t.n_tokens)),
              t.perplexity(), t.bits_per_byte());
}

// Written under a temporary name and renamed: a failed run never leaves half a file.
void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    GLAM_REQUIRE(out, "cannot write '", tmp, "'");
    out << text;
    GLAM_REQUIRE(out.good(), "error while writing '", tmp, "'");
  }
  fs::rename(tmp, path);
}

// One JSON line per example: what the model chose or wrote, and the reference.
std::string prediction_lines(const std::vector<Task>& tasks, const std::vector<TaskResult>& results) {
  std::string text;
  for (size_t t = 0; t < results.size(); t++)
    for (size_t i = 0; i < results[t].examples.size(); i++) {
      const ExampleResult& ex = results[t].examples[i];
      const Example& e = tasks[t].examples[i];
      json j = {{"task", results[t].name}, {"index", i}, {"prompt", ex.prompt}};
      if (results[t].kind == TaskKind::multiple_choice) {
        j["scores"] = ex.scores;
        j["predicted"] = ex.predicted;
        j["gold"] = e.gold;
        j["correct"] = ex.predicted == e.gold;
      } else {
        j["prediction"] = ex.prediction;
        j["answers"] = e.answers;
        j["em"] = ex.em;
        j["f1"] = ex.f1;
      }
      text += j.dump() + "\n";
    }
  return text;
}

// An output file named on the command line: refused when it exists, unless --overwrite.
std::string output_path(const po::variables_map& vm, const char* flag) {
  if (!vm.count(flag)) return "";
  const std::string path = vm[flag].as<std::string>();
  GLAM_REQUIRE(!fs::is_directory(path), "--", flag, " '", path, "' is a directory");
  GLAM_REQUIRE(!fs::exists(path) || vm["overwrite"].as<bool>(), "--", flag, " '", path,
               "' already exists (give --overwrite to replace it)");
  return path;
}

// Whether two spellings name one file: the same path once symlinks, "." and ".."
// are resolved, or (both existing) the same inode, a hard link included.
// The path a file would be written to: absolute (GCC's weakly_canonical leaves a
// path of missing parts relative), symlinks followed even when they dangle.
fs::path resolved(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec);
  for (int hops = 0; hops < 40 && fs::is_symlink(p, ec); hops++) {
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) break;
    p = target.is_absolute() ? target : p.parent_path() / target;
  }
  return fs::weakly_canonical(p, ec).lexically_normal();
}

bool same_file(const std::string& a, const std::string& b) {
  if (resolved(a) == resolved(b)) return true;
  std::error_code ec;
  return fs::exists(a, ec) && fs::exists(b, ec) && fs::equivalent(a, b, ec) && !ec;
}

// No output may be an input or the other output: one would overwrite the other.
void require_distinct_outputs(const po::variables_map& vm) {
  const char* outputs[] = {"json", "predictions"};
  const char* inputs[] = {"tasks", "text"};
  for (const char* out : outputs) {
    if (!vm.count(out)) continue;
    const std::string path = vm[out].as<std::string>();
    for (const char* other : outputs)
      GLAM_REQUIRE(other == out || !vm.count(other) || !same_file(path, vm[other].as<std::string>()), "--json '",
                   vm["json"].as<std::string>(), "' and --predictions '", vm["predictions"].as<std::string>(),
                   "' name the same file; give two different files");
    for (const char* in : inputs)
      GLAM_REQUIRE(!vm.count(in) || !same_file(path, vm[in].as<std::string>()), "--", out, " '", path,
                   "' is the --", in, " input '", vm[in].as<std::string>(), "'; write the output elsewhere");
  }
}

// What the command line asks for, checked before the model is loaded.
struct EvalRequest {
  fs::path run_dir;
  std::vector<Task> tasks;
  std::string text, json_path, predictions_path, mesh, device;
  EvalOptions opt;
};

EvalRequest parse_request(const po::variables_map& vm) {
  GLAM_REQUIRE(vm.count("run-dir"), "glam eval: --run-dir is required");
  GLAM_REQUIRE(vm.count("tasks") || vm.count("text"), "glam eval: give --tasks PATH and/or --text FILE");
  EvalRequest r;
  r.opt.shots = vm["shots"].as<int64_t>();
  r.opt.seed = vm["seed"].as<Seed>();
  r.opt.unnormalized = vm["unnormalized"].as<bool>();
  r.opt.beam = vm["beam"].as<int64_t>();
  r.opt.max_tokens = vm["max-tokens"].as<int64_t>();
  r.opt.limit = vm["limit"].as<int64_t>();
  GLAM_REQUIRE(r.opt.beam >= 1 && r.opt.beam <= kMaxBeam, "--beam must be from 1 to ", kMaxBeam, ", got ", r.opt.beam);
  GLAM_REQUIRE(r.opt.max_tokens >= 1 && r.opt.max_tokens <= kMaxNewTokens, "--max-tokens must be from 1 to ",
               kMaxNewTokens, ", got ", r.opt.max_tokens);
  GLAM_REQUIRE(r.opt.shots >= 0 && r.opt.shots <= 1000, "--shots must be from 0 to 1000, got ", r.opt.shots);
  GLAM_REQUIRE(r.opt.limit >= 0, "--limit must be >= 0, got ", r.opt.limit);
  r.mesh = vm["mesh"].as<std::string>();
  int mesh_d = 0, mesh_m = 0;
  if (!r.mesh.empty()) parse_mesh(r.mesh, "--mesh", &mesh_d, &mesh_m);
  require_distinct_outputs(vm);
  r.device = vm["device"].as<std::string>();
  r.json_path = output_path(vm, "json");
  r.predictions_path = output_path(vm, "predictions");
  GLAM_REQUIRE(r.predictions_path.empty() || vm.count("tasks"), "--predictions needs --tasks");
  if (vm.count("tasks")) r.tasks = load_tasks(vm["tasks"].as<std::string>(), vm["format"].as<std::string>(), r.opt.shots);
  if (vm.count("text")) {
    r.text = vm["text"].as<std::string>();
    GLAM_REQUIRE(fs::is_regular_file(r.text), "text file '", r.text, "' does not exist");
  }
  r.run_dir = vm["run-dir"].as<std::string>();
  GLAM_REQUIRE(fs::exists(r.run_dir / "config.cfg"), "run dir '", r.run_dir.string(),
               "' has no config.cfg (was it written by glam train?)");
  return r;
}

json run_tasks(const EvalRequest& r, Model& model, const Tokenizer& tok, const Mesh& mesh) {
  std::vector<TaskResult> results;
  json tasks = json::array();
  double sum = 0.0;
  for (const Task& t : r.tasks) {
    const auto t0 = std::chrono::steady_clock::now();
    results.push_back(evaluate_task(t, model, tok, mesh, r.opt));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (mesh.is_root())
      std::fprintf(stderr, "# %s: %lld examples in %.2fs\n", t.name.c_str(), static_cast<long long>(results.back().n), secs);
    tasks.push_back(task_json(results.back()));
    sum += results.back().score();
  }
  if (mesh.is_root()) print_tasks(results);
  if (mesh.is_root() && !r.predictions_path.empty()) write_file(r.predictions_path, prediction_lines(r.tasks, results));
  return {{"tasks", tasks}, {"average", sum / static_cast<double>(results.size())}};
}

json run_text(const EvalRequest& r, Model& model, const Tokenizer& tok, const Mesh& mesh) {
  const auto t0 = std::chrono::steady_clock::now();
  const TextResult t = evaluate_text(r.text, model, tok, mesh, r.opt.rows);
  GLAM_REQUIRE(std::isfinite(t.nll), "text '", r.text, "': the negative log-likelihood is not finite (NaN or Inf ",
               "in the weights of run dir '", r.run_dir.string(), "'; was it trained with a huge train.lr?)");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (mesh.is_root())
    std::fprintf(stderr, "# %s: %lld tokens scored in %.2fs (%.0f tokens/s)\n", r.text.c_str(),
                 static_cast<long long>(t.n_tokens), secs, static_cast<double>(t.n_tokens) / std::max(secs, 1e-9));
  if (mesh.is_root()) print_text(t);
  return {{"path", t.path}, {"docs", t.n_docs}, {"tokens", t.n_tokens}, {"bytes", t.n_bytes},
          {"nll", t.nll}, {"perplexity", t.perplexity()}, {"bits_per_byte", t.bits_per_byte()}};
}

}  // namespace

int eval_main(const std::vector<std::string>& args) {
  const po::options_description cli = eval_options();
  po::variables_map vm;
  if (!parse_glam_command(args, cli, "glam eval", vm)) return 0;  // --help
  EvalRequest r = parse_request(vm);

  Config cfg = load_config_file((r.run_dir / "config.cfg").string());
  Activity loading(msg("loading the model of run dir '", r.run_dir.string(), "'"));
  Mesh mesh = Mesh::create(r.mesh);
  const Device device = select_device(r.device, mesh);
  if (device == Device::cpu) require_fits_host_memory(cfg, mesh, MemoryUse::inference, "glam eval");
  Tokenizer tokenizer((r.run_dir / "tokenizer.model").string());
  Model model(cfg, mesh, device);
  load_weights((r.run_dir / "weights.h5").string(), model.params(), mesh);
  model.sync_to_device();
  // as many rows per forward as a training micro-step holds on this rank: memory the run is known to fit
  r.opt.rows = std::max<int64_t>(1, cfg.train.micro_rows > 0 ? cfg.train.micro_rows : cfg.train.batch_rows / mesh.data_size);

  json report = {{"run_dir", r.run_dir.string()}, {"shots", r.opt.shots}, {"seed", r.opt.seed},
                 {"unnormalized", r.opt.unnormalized}, {"beam", r.opt.beam}, {"max_tokens", r.opt.max_tokens},
                 {"limit", r.opt.limit}};
  Activity evaluating("evaluating (--beam and --max-tokens set the generative tasks' memory)");
  if (!r.tasks.empty()) report.update(run_tasks(r, model, tokenizer, mesh));
  if (!r.text.empty()) report["text"] = run_text(r, model, tokenizer, mesh);
  if (mesh.is_root() && !r.json_path.empty()) write_file(r.json_path, report.dump(2) + "\n");
  return 0;
}

}  // namespace glam
