// `glam train`: read the config, build the mesh and the model, then for each step
// read this rank's rows, forward, backward, check the gradients, update; log a
// progress line and a metrics.jsonl record; write the weights at the end.
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "glam/model/adafactor.h"
#include "glam/data/batch.h"
#include "glam/base/check.h"
#include "glam/checkpoint/checkpoint.h"
#include "glam/base/cli.h"
#include "glam/commands/commands.h"
#include "glam/layers/cpu/gemm.h"
#include "glam/mesh/host_memory.h"
#include "glam/io/json_line.h"
#include "glam/data/loader.h"
#include "glam/model/micro_steps.h"
#include "glam/data/mixture.h"
#include "glam/model/model.h"
#include "glam/io/run_dir.h"
#include "glam/data/tokenizer.h"
#include "glam/commands/validation.h"
#include "glam/checkpoint/weights.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace glam {

namespace {

struct StepRecord {
  int64_t step = 0;
  LossParts parts;
  double lr = 0, grad_norm = 0, tokens_per_s = 0, eta_s = 0;
  double data_wait_s = 0;                  // time the step waited for the loader
  std::vector<std::string> sources;        // [sources] of the mixture
  std::vector<double> epochs;              // [sources] epochs consumed after this step
  bool skipped = false;
  int64_t skipped_total = 0;
  int64_t resumed_from = -1;               // the checkpoint's step, in the first record after a resume
};

// Expert load of one MoE layer over the global batch.
struct LayerLoad {
  double dropped_frac = 0.0;   // choices dropped for capacity / choices
  double max_over_mean = 0.0;  // busiest expert's choices before capacity / mean
};

std::vector<LayerLoad> layer_loads(const LossParts& parts) {
  std::vector<LayerLoad> out;
  const size_t n_moe = parts.load_before.size();
  for (size_t l = 0; l < n_moe; l++) {
    const std::vector<int64_t>& load = parts.load_before[l];
    int64_t total = 0, most = 0;
    for (int64_t v : load) { total += v; most = std::max(most, v); }
    LayerLoad ll;
    ll.dropped_frac = total ? double(parts.layer_dropped[l]) / total : 0.0;
    ll.max_over_mean = total ? double(most) * load.size() / total : 0.0;
    out.push_back(ll);
  }
  return out;
}

// The metrics.jsonl record of a step; a skipped step's non-finite loss is written as null.
std::string metrics_record(const StepRecord& r) {
  const double dropped = r.parts.choices ? double(r.parts.dropped) / r.parts.choices : 0.0;
  nlohmann::ordered_json j = {{"step", r.step},   {"loss", r.parts.loss}, {"ce", r.parts.ce},
                              {"aux", r.parts.aux}, {"z", r.parts.z},       {"lr", r.lr},
                              {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s},
                              {"dropped_frac", dropped},  {"skipped", r.skipped},
                              {"skipped_total", r.skipped_total}};
  j["load_before"] = r.parts.load_before;
  j["load_after"] = r.parts.load_after;
  nlohmann::ordered_json dropped_frac = nlohmann::ordered_json::array(), max_mean = nlohmann::ordered_json::array();
  for (const LayerLoad& l : layer_loads(r.parts)) {
    dropped_frac.push_back(l.dropped_frac);
    max_mean.push_back(l.max_over_mean);
  }
  j["layer_dropped_frac"] = dropped_frac;
  j["layer_max_mean_load"] = max_mean;
  j["epochs"] = nlohmann::ordered_json::object();
  for (size_t s = 0; s < r.epochs.size(); s++) j["epochs"][r.sources[s]] = r.epochs[s];
  if (r.resumed_from >= 0) j["resumed_from"] = r.resumed_from;
  return json_line(j, kMetricsPrecision);
}

// "      data fortunes 0.031 ep | wordnet 0.012 ep | wait 0.0 ms" for the progress log.
std::string epochs_line(const StepRecord& r) {
  std::string out = "      data";
  char buf[160];
  for (size_t s = 0; s < r.epochs.size(); s++) {
    std::snprintf(buf, sizeof buf, "%s %s %.4f ep", s ? " |" : "", r.sources[s].c_str(), r.epochs[s]);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, " | wait %.2f ms", 1e3 * r.data_wait_s);
  return out + buf;
}

// "moe L0 drop 3.1% max/mean 1.42 | L2 ..." for the progress log.
std::string load_line(const LossParts& parts) {
  std::string out;
  char buf[96];
  const std::vector<LayerLoad> loads = layer_loads(parts);
  for (size_t l = 0; l < loads.size(); l++) {
    std::snprintf(buf, sizeof buf, "%sL%zu drop %.1f%% max/mean %.2f", l ? " | " : "      moe ", 2 * l,
                  100.0 * loads[l].dropped_frac, loads[l].max_over_mean);
    out += buf;
  }
  return out;
}

void print_progress(const StepRecord& r, int64_t steps) {
  std::printf("step %5lld/%lld | loss %.4f | ce %.4f | aux %.3f | lr %.2e | gnorm %.3f | %.0f tok/s | ETA %.0fs%s\n",
              static_cast<long long>(r.step), static_cast<long long>(steps), r.parts.loss, r.parts.ce,
              r.parts.aux, r.lr, r.grad_norm, r.tokens_per_s, r.eta_s, r.skipped ? " | SKIPPED (non-finite grad)" : "");
  if (!r.parts.load_before.empty()) std::printf("%s\n", load_line(r.parts).c_str());
  std::printf("%s\n", epochs_line(r).c_str());
  std::fflush(stdout);
}

// Collective: runs f on rank 0 only; a UserError it throws is thrown on every
// rank (rank 0 prints it), so that no rank is left waiting in a collective.
template <typename F>
void on_root(const Mesh& mesh, F&& f) {
  std::string error;
  if (mesh.is_root()) {
    try {
      f();
    } catch (const UserError& e) {
      error = e.what();
    }
  }
  if (mesh.any(!error.empty())) throw UserError(error.empty() ? "rank 0 could not prepare the run dir" : error);
}

// The run dir gets the effective config and a copy of the tokenizer, so that
// `glam generate --run-dir` needs nothing else, and build.json naming this glam's
// version and commit. All are written atomically; the tokenizer only when the copy differs.
void prepare_run_dir(const std::string& dir, const Config& cfg) {
  write_file_atomic((fs::path(dir) / "config.cfg").string(), cfg.to_ini());
  write_build_info(dir);
  copy_file_atomic(cfg.data.tokenizer, (fs::path(dir) / "tokenizer.model").string());
}

// --overwrite: what an earlier run left goes before anything is written.
void discard_earlier_run(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(fs::path(dir) / "checkpoints", ec);
  if (!ec) fs::remove(fs::path(dir) / "weights.h5", ec);
  if (ec) throw UserError(msg("--overwrite: cannot remove the earlier run in '", dir, "': ", ec.message()));
}

// A run dir whose run is complete is not trained again, unless --overwrite
// discards it or a higher train.steps continues it (resuming).
void refuse_finished_run(const std::string& dir, bool overwrite, const Config& cfg) {
  if (overwrite) return;
  const std::string latest = latest_checkpoint(dir);
  if (latest.empty()) {
    GLAM_REQUIRE(!fs::exists(fs::path(dir) / "weights.h5"), "run dir '", dir,
                 "' holds a finished run (weights.h5) but no checkpoint; choose another --run-dir or pass --overwrite");
    return;
  }
  const int64_t at = checkpoint_step_of_name(latest);
  GLAM_REQUIRE(at < cfg.train.steps, "run dir '", dir, "' holds a finished run: its last checkpoint ", latest,
               " is at step ", at, " and train.steps is ", cfg.train.steps, "; pass --overwrite to start afresh, "
               "or raise --train.steps above ", at, " to train longer");
}

// Phase times of rank 0 and the communication of every rank, per step.
void print_phase_report(const PhaseTimers& timers, const Mesh& mesh, double total, int64_t steps) {
  double comm[7] = {mesh.stats.seconds, static_cast<double>(mesh.stats.alltoall_bytes),
                    static_cast<double>(mesh.stats.allreduce_data_bytes),
                    static_cast<double>(mesh.stats.allreduce_model_bytes),
                    static_cast<double>(mesh.stats.allreduce_other_bytes),
                    static_cast<double>(mesh.stats.reduce_scatter_bytes),
                    static_cast<double>(mesh.stats.allgather_bytes)};
  const double max_mpi = mesh.max_world(comm[0]);
  mesh.allreduce_sum_world(comm, 7);
  if (!mesh.is_root()) return;
  const double per = 1.0 / std::max<int64_t>(1, steps);
  std::printf("# phases (rank 0, %.1f s in all):\n%s", total, timers.report(total).c_str());
  std::printf("  %-12s %9.2f s %6.1f%%   (inside MPI, rank 0; max over ranks %.2f s)\n", "mpi", mesh.stats.seconds,
              total > 0 ? 100.0 * mesh.stats.seconds / total : 0.0, max_mpi);
  std::printf("# communication per step (checkpoints left out), all ranks together: alltoallv %.3f MB; allreduce over data %.3f MB, "
              "over model %.3f MB, other %.3f MB; reduce-scatter over data %.3f MB, all-gather over data %.3f MB\n",
              comm[1] * per / 1e6, comm[2] * per / 1e6, comm[3] * per / 1e6, comm[4] * per / 1e6, comm[5] * per / 1e6,
              comm[6] * per / 1e6);
  if (mesh.stats.nonblocking_calls > 0)
    std::printf("# gradient reduce-scatters (rank 0): %.3f s in flight behind the backward, %.3f s exposed (%.1f%%)\n",
                mesh.stats.inflight_seconds, mesh.stats.exposed_seconds,
                mesh.stats.inflight_seconds > 0 ? 100.0 * mesh.stats.exposed_seconds / mesh.stats.inflight_seconds : 0.0);
  const CommStats& x = mesh.stats;  // expert all-to-alls: train.exchange_chunks > 1 overlaps them
  if (x.a2a_nonblocking_calls > 0)
    std::printf("# expert all-to-alls (rank 0): %.3f s in flight over %lld chunk exchanges, %.3f s exposed (%.1f%%)\n",
                x.a2a_inflight_seconds, static_cast<long long>(x.a2a_nonblocking_calls), x.a2a_exposed_seconds,
                x.a2a_inflight_seconds > 0 ? 100.0 * x.a2a_exposed_seconds / x.a2a_inflight_seconds : 0.0);
  else if (x.alltoall_calls > 0)
    std::printf("# expert all-to-alls (rank 0): %.3f s, all exposed (blocking: train.exchange_chunks 1)\n",
                x.alltoall_seconds);
}


// The run's validator; null when validation is off or no source has a held-out split.
std::unique_ptr<Validator> make_validator(const Mixture& corpus, const Config& cfg, const Mesh& mesh) {
  if (cfg.train.val_every <= 0) return nullptr;
  auto v = std::make_unique<Validator>(corpus, cfg, mesh);
  for (const std::string& s : v->skipped())
    if (mesh.is_root())
      std::printf("# validation: source %s has no held-out split (encode it with --val-fraction); left out\n", s.c_str());
  return v->empty() ? nullptr : std::move(v);
}

// Collective: one validation pass; rank 0 logs it and appends it to metrics.jsonl.
void validate(const Validator& validator, Model& model, int64_t step, AppendLog& metrics, const Mesh& mesh) {
  ScopedPhase phase(model.timers, "validation");
  const ValResult v = validator.run(model);
  if (!mesh.is_root()) return;
  metrics.append(val_json(step, v));
  std::printf("val  %5lld | val_loss %.4f |", static_cast<long long>(step), v.loss);
  for (size_t s = 0; s < v.names.size(); s++) std::printf(" %s %.4f", v.names[s].c_str(), v.by_source[s]);
  std::printf("\n");
  std::fflush(stdout);
}

// This rank's loader: its slice of every global batch from first_step on.
LoaderOptions loader_options(const Config& cfg, const Mesh& mesh, int64_t first_step) {
  LoaderOptions o;
  o.seed = cfg.train.seed;
  o.batch_rows = cfg.train.batch_rows;
  o.seq_len = cfg.model.seq_len;
  o.data_rank = mesh.data_rank;
  o.data_size = mesh.data_size;
  o.first_step = first_step;
  return o;
}

// [sources] epochs of each source read after the batch's step.
std::vector<double> epochs_after(const Mixture& corpus, const LoadedBatch& b, int64_t seq_len) {
  std::vector<double> out;
  for (size_t s = 0; s < corpus.size(); s++) out.push_back(epochs_of(corpus, b.rows_drawn, s, seq_len));
  return out;
}

volatile std::sig_atomic_t g_stop_signal = 0;
// SIGTERM, SIGUSR1 and a first SIGINT stop the run after its step, with a checkpoint;
// a second SIGINT (Ctrl-C twice) ends the process at once.
extern "C" void on_stop_signal(int sig) {
  if (sig == SIGINT && g_stop_signal != 0) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
  }
  g_stop_signal = sig;
}

// Keeps the metrics of steps <= step (a resumed run repeats the steps after its
// checkpoint); rewritten atomically.
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_file(path.string()));
  std::string line, kept;
  while (std::getline(in, line)) {  // a line cut short by a crash does not parse and goes
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    const bool numbered = record.is_object() && record.contains("step") && record["step"].is_number_integer();
    if (numbered && record["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path.string(), kept);
}

// A resumed run must read tokens of the tokenizer it was trained with (the copy
// in the run dir), whatever data.tokenizer now names. Collective: every rank
// reads the copy before rank 0 may replace it, and all decide together.
void require_same_tokenizer(const std::string& run_dir, const Tokenizer& tokenizer, const Config& cfg,
                            const Mesh& mesh) {
  const fs::path saved = fs::path(run_dir) / "tokenizer.model";
  std::string before = tokenizer.hash();
  try {
    if (fs::exists(saved)) before = Tokenizer(saved.string()).hash();
  } catch (const UserError&) {
    before = "unreadable";
  }
  GLAM_REQUIRE(!mesh.any(before != tokenizer.hash()), "run dir '", run_dir, "' was trained with the tokenizer ",
               saved.string(), " (hash ", before, ") but data.tokenizer '", cfg.data.tokenizer, "' has hash ",
               tokenizer.hash(), "; resume with the same tokenizer or start another run dir");
}

// Resumes from the newest checkpoint of the run dir, or starts at step 0.
TrainState resume_or_start(const std::string& run_dir, bool overwrite, Model& model, Adafactor& opt,
                           const Config& cfg, const Mesh& mesh) {
  TrainState st;
  st.seed = cfg.train.seed;
  const std::string latest = overwrite ? "" : latest_checkpoint(run_dir);
  if (latest.empty()) return st;  // refuse_finished_run() checked the run dir
  st = load_checkpoint(latest, model.params(), opt, mesh);
  // the rows replayed on resume follow this run's batch_rows: it must be the checkpoint's
  const std::string problem = train_state_problem(st, INT64_MAX, cfg.train.batch_rows);
  GLAM_REQUIRE(problem.empty(), "checkpoint '", latest, "' does not fit this run's config: ", problem,
               " (train.batch_rows may not change on resume)");
  GLAM_REQUIRE(st.seed == cfg.train.seed, "checkpoint '", latest, "' was written with train.seed ", st.seed,
               " but the config has ", cfg.train.seed, "; resuming needs the same seed");
  if (mesh.is_root()) std::printf("# resumed from %s at step %lld\n", latest.c_str(), static_cast<long long>(st.step));
  return st;
}

po::options_description train_options() {
  po::options_description cli("glam train [options] [--section.key value ...]");
  cli.add_options()
    ("help,h", "show this help")
    ("config", po::value<std::string>(), "INI config file (e.g. input/glam-tiny.cfg)")
    ("run-dir", po::value<std::string>(), "run directory; a run dir holding a checkpoint is resumed")
    ("mesh", po::value<std::string>()->default_value(""), "device mesh DxM (default: every rank on data)")
    ("device", po::value<std::string>()->default_value("auto"), "auto | cpu | cuda (auto: cuda when a GPU is visible)")
    ("overwrite", po::bool_switch(),
     overwrite_help("run in --run-dir: start afresh, discarding its checkpoints and weights").c_str());
  return cli;
}

// What the mesh's shape asks of the batch: whole rows, groups and micro-steps per data rank.
void check_batch_split(const Config& cfg, const Mesh& mesh) {
  GLAM_REQUIRE(!cfg.data.corpus.empty(), "data.corpus is not set (config file [data] corpus = FILE)");
  GLAM_REQUIRE(!cfg.data.tokenizer.empty(), "data.tokenizer is not set (config file [data] tokenizer = FILE)");
  GLAM_REQUIRE(cfg.train.batch_rows % mesh.data_size == 0, "train.batch_rows ", cfg.train.batch_rows,
               " must be a multiple of the data axis size ", mesh.data_size);
  const int64_t local_tokens = cfg.train.batch_rows / mesh.data_size * cfg.model.seq_len;
  GLAM_REQUIRE(cfg.model.n_experts == 0 || local_tokens % cfg.model.group_size == 0, "model.group_size ",
               cfg.model.group_size, " must divide the tokens of each data rank (", local_tokens,
               " = train.batch_rows / ", mesh.data_size, " * model.seq_len): routing groups may not span ranks");
  const int64_t micro_rows = cfg.train.micro_rows, rank_rows = cfg.train.batch_rows / mesh.data_size;
  GLAM_REQUIRE(micro_rows == 0 || rank_rows % micro_rows == 0, "train.micro_rows ", micro_rows,
               " must divide the rows each data rank has in a step (", rank_rows, " = train.batch_rows / ",
               mesh.data_size, " data ranks)");
}

// The corpus must be tokenized with the config's tokenizer, whose pieces fit the vocabulary.
void check_tokenizer(const Config& cfg, const Mixture& corpus, const Tokenizer& tokenizer) {
  GLAM_REQUIRE(corpus.info().tokenizer_hash == tokenizer.hash(), "corpus '", cfg.data.corpus,
               "' was tokenized with another SentencePiece model than '", cfg.data.tokenizer,
               "' (hash ", corpus.info().tokenizer_hash, " vs ", tokenizer.hash(), ")");
  GLAM_REQUIRE(tokenizer.vocab_size() <= cfg.model.vocab_size, "tokenizer '", cfg.data.tokenizer, "' has ",
               tokenizer.vocab_size(), " pieces but model.vocab_size is ", cfg.model.vocab_size);
}

// Collective (the thread-binding check): the effective config, the mesh and the device.
void print_header(const Config& cfg, const Mesh& mesh, Device device) {
  const std::string binding_warning = thread_binding_warning(mesh);
  if (!mesh.is_root()) return;
  std::printf("# glam train: effective config\n%s\n", cfg.to_ini().c_str());
  std::printf("# mesh %dx%d (data x model) on %d ranks, device %s\n", mesh.data_size, mesh.model_size,
              mesh.world_size, device_description(device).c_str());
  if (!binding_warning.empty()) std::printf("%s\n", binding_warning.c_str());
  if (device == Device::cpu && cfg.train.cpu_precision == "bf16") {
    std::printf("# CPU GEMMs in bf16 through oneDNN (%s)\n", cpu::bf16_implementation().c_str());
    if (!cpu::bf16_native())
      std::printf("# warning: oneDNN has no native bf16 matmul for this CPU; bf16 runs as rounded operands "
                  "and is no faster than train.cpu_precision = fp32\n");
  }
}

// One run's steps: the model, its optimizer and state, the data and the log.
struct Run {
  const Config& cfg;
  const Mesh& mesh;
  const std::string& run_dir;
  Model& model;
  Adafactor& optimizer;
  TrainState& st;
  const Mixture& corpus;
  const Validator* validator;
  AppendLog& metrics;
  std::chrono::steady_clock::time_point start, last_checkpoint;
};

// Loads step `step`'s rows, forward, backward, and the update unless the
// gradients are not finite; fills r.
void train_step(Run& run, DataLoader& loader, StepRecord& r, int64_t step, int64_t first_step) {
  const Config& cfg = run.cfg;
  const auto t0 = std::chrono::steady_clock::now();
  debug_kill_point("step", step);
  LoadedBatch loaded;
  {
    ScopedPhase phase(run.model.timers, "io");
    loaded = loader.next();
  }
  GLAM_ASSERT(loaded.step == step && loaded.batch.rows == cfg.train.batch_rows / run.mesh.data_size);
  r.data_wait_s = loader.last_wait_s();
  r.epochs = epochs_after(run.corpus, loaded, cfg.model.seq_len);
  run.model.set_step(step);
  r.parts = forward_backward(run.model, loaded.batch, cfg.train.micro_rows, run.mesh);  // zeroes, accumulates
  r.step = step + 1;
  r.grad_norm = run.model.grad_norm();  // the model times its optimizer phase on the backend's clock
  r.skipped = run.mesh.any(!std::isfinite(r.grad_norm) || !std::isfinite(r.parts.loss));
  r.lr = learning_rate(cfg.train, step + 1);
  if (r.skipped) r.skipped_total++;
  else run.model.optimizer_step(run.optimizer, r.lr, run.st.updates++);
  run.st.step = step + 1;
  run.st.skipped_total = r.skipped_total;
  run.st.data_next_row = run.st.step * cfg.train.batch_rows;
  const auto t1 = std::chrono::steady_clock::now();
  r.tokens_per_s = double(cfg.train.batch_rows * cfg.model.seq_len) / std::chrono::duration<double>(t1 - t0).count();
  r.eta_s = std::chrono::duration<double>(t1 - run.start).count() / double(run.st.step - first_step) *
            double(cfg.train.steps - run.st.step);
}

// A checkpoint when one is due (every N steps or T minutes, the last step) or a
// signal asked for one: one decision for the whole mesh. Returns whether to stop.
bool checkpoint_if_due(Run& run) {
  const Config& cfg = run.cfg;
  const Mesh& mesh = run.mesh;
  const bool stop = mesh.any(g_stop_signal != 0);
  const double minutes =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run.last_checkpoint).count() / 60.0;
  const bool timed = cfg.checkpoint.every_minutes > 0 && minutes >= cfg.checkpoint.every_minutes;
  const int64_t step = run.st.step;
  const bool due = mesh.any(timed) || step == cfg.train.steps ||
                   (cfg.checkpoint.every_steps > 0 && step % cfg.checkpoint.every_steps == 0);
  if (!stop && !due) return false;
  ScopedPhase phase(run.model.timers, "checkpoint");
  const CommStats step_bytes = mesh.stats;  // the report's bytes are the steps', without checkpoints
  run.model.sync_to_host(&run.optimizer);
  const std::string path =
      save_checkpoint(run.run_dir, run.model.params(), run.optimizer, run.st, cfg, mesh, cfg.checkpoint.keep);
  const double mpi_seconds = mesh.stats.seconds;
  mesh.stats = step_bytes;
  mesh.stats.seconds = mpi_seconds;
  run.last_checkpoint = std::chrono::steady_clock::now();
  if (mesh.is_root() && (stop || cfg.train.log_every == 1 || step % cfg.train.log_every == 0))
    std::printf("# checkpoint %s\n", path.c_str());
  return stop;
}

// The steps from the run's state to train.steps; 0, or the exit status of a run
// stopped by a full disk or a signal.
int train_steps(Run& run) {
  const Config& cfg = run.cfg;
  const Mesh& mesh = run.mesh;
  StepRecord r;
  r.skipped_total = run.st.skipped_total;
  r.resumed_from = run.st.step > 0 ? run.st.step : -1;  // marks the first record after a resume
  for (size_t s = 0; s < run.corpus.size(); s++) r.sources.push_back(run.corpus.source(s).name);
  const int64_t first_step = run.st.step;
  DataLoader loader(run.corpus, loader_options(cfg, mesh, first_step));
  for (int64_t step = first_step; step < cfg.train.steps; step++) {
    train_step(run, loader, r, step, first_step);
    if (mesh.is_root()) {
      run.metrics.append(metrics_record(r));
      if (r.step % cfg.train.log_every == 0 || r.step == cfg.train.steps || r.skipped) print_progress(r, cfg.train.steps);
    }
    r.resumed_from = -1;
    if (run.validator && run.st.step % cfg.train.val_every == 0)  // fixed steps: a resumed run validates as one
      validate(*run.validator, run.model, run.st.step, run.metrics, mesh);
    // A metrics.jsonl that cannot be written (disk full) ends the run on every rank;
    // the last checkpoint stays the one to resume from.
    if (mesh.any(!run.metrics.error().empty())) {
      if (mesh.is_root())
        std::fprintf(stderr, "glam: error: %s; stopping after step %lld without a checkpoint (free space and rerun "
                     "to resume from the last one)\n", run.metrics.error().c_str(), static_cast<long long>(run.st.step));
      return kExitIoError;
    }
    if (checkpoint_if_due(run)) {
      if (mesh.is_root())
        std::printf("# stopped by a signal after step %lld; checkpoint written; exit %d (requeue and rerun to resume)\n",
                    static_cast<long long>(run.st.step), kExitPreempted);
      return kExitPreempted;
    }
  }
  if (mesh.is_root())
    std::printf("# data loader: the steps waited %.3f s in all for batches (%.3f ms per step)\n", loader.total_wait_s(),
                1e3 * loader.total_wait_s() / double(std::max<int64_t>(1, run.st.step - first_step)));
  return 0;
}

}  // namespace

int train_main(const std::vector<std::string>& args) {
  const po::options_description cli = train_options();
  Config cfg;
  po::variables_map vm = parse_args(args, cli, cfg);
  if (vm.count("help")) {
    po::options_description keys("Configuration keys");
    add_config_options(keys, cfg);
    std::cout << cli << "\n" << keys << "\n";
    return 0;
  }
  GLAM_REQUIRE(vm.count("run-dir"), "glam train: --run-dir is required");
  const std::string run_dir = vm["run-dir"].as<std::string>();
  const bool overwrite = vm["overwrite"].as<bool>();
  cfg.mesh = vm["mesh"].as<std::string>();
  Mesh mesh = Mesh::create(cfg.mesh);
  RunDirLock lock;  // held until train_main returns or throws
  on_root(mesh, [&] { lock = RunDirLock(run_dir); });
  refuse_finished_run(run_dir, overwrite, cfg);
  const Device device = select_device(vm["device"].as<std::string>(), mesh);
  // within every key's range, a config may still not fit this machine: say which keys to lower
  if (device == Device::cpu) require_fits_host_memory(cfg, mesh, MemoryUse::training, "glam train");
  check_batch_split(cfg, mesh);
  const Mixture corpus = Mixture::open(cfg.data.corpus, cfg.model.vocab_size);  // first: its errors name the corpus
  const Tokenizer tokenizer(cfg.data.tokenizer);
  check_tokenizer(cfg, corpus, tokenizer);
  print_header(cfg, mesh, device);

  const std::unique_ptr<Validator> validator = make_validator(corpus, cfg, mesh);
  Model model(cfg, mesh, device);
  Adafactor optimizer(model.params(), AdafactorOptions::from(cfg.train));
  TrainState st = resume_or_start(run_dir, overwrite, model, optimizer, cfg, mesh);
  if (st.step > 0) require_same_tokenizer(run_dir, tokenizer, cfg, mesh);
  model.sync_to_device(&optimizer);  // the GPU's copies start from the checkpoint (no-op on the CPU)
  AppendLog metrics;  // rank 0's metrics.jsonl
  on_root(mesh, [&] {
    if (overwrite) discard_earlier_run(run_dir);
    prepare_run_dir(run_dir, cfg);
    if (st.step > 0) truncate_metrics(fs::path(run_dir) / "metrics.jsonl", st.step);
    metrics = AppendLog((fs::path(run_dir) / "metrics.jsonl").string(), st.step == 0);
    std::printf("# model: %lld parameters, %lld activated per token; corpus: %lld tokens in %lld documents\n",
                static_cast<long long>(count_params(cfg.model)), static_cast<long long>(count_activated_params(cfg.model)),
                static_cast<long long>(corpus.info().n_tokens), static_cast<long long>(corpus.info().n_docs));
  });
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) std::signal(sig, on_stop_signal);

  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = st.step;
  Run run{cfg, mesh, run_dir, model, optimizer, st, corpus, validator.get(), metrics, start, start};
  const int stopped = train_steps(run);
  if (stopped != 0) return stopped;
  {
    ScopedPhase phase(model.timers, "io");
    model.sync_to_host(&optimizer);
    save_weights((fs::path(run_dir) / "weights.h5").string(), model.params(), cfg, mesh);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (mesh.is_root())
    std::printf("# done: step %lld of %lld (%lld skipped) in %.1fs; weights in %s/weights.h5\n",
                static_cast<long long>(st.step), static_cast<long long>(cfg.train.steps),
                static_cast<long long>(st.skipped_total), total, run_dir.c_str());
  model.finish_phases();
  print_phase_report(model.timers, mesh, total, st.step - first_step);
  return 0;
}

}  // namespace glam
