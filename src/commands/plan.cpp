// `glam plan`: parameter counts, FLOPs, memory and communication per rank of a
// config on a mesh, whether it fits, and the predicted step time on a cluster.
// Needs no corpus and no MPI peers; prints a report or one JSON object.
#include <mpi.h>

#include <cstdio>
#include <iostream>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/commands/commands.h"
#include "glam/model/config.h"
#include "glam/io/json_line.h"
#include "glam/plan/perf_model.h"
#include "glam/plan/plan.h"

namespace po = boost::program_options;
using nlohmann::ordered_json;

namespace glam {

namespace {

struct PlanRequest {
  PlanOptions opt;
  Cluster cluster;
  int64_t device_memory = 0;   // bytes one rank may hold
  bool json = false;
};

std::string count(double n) {  // 1.16T, 96.61B, 13.11M
  const char* names[] = {"", "K", "M", "B", "T"};
  int i = 0;
  while (n >= 1000.0 && i < 4) { n /= 1000.0; i++; }
  char buf[32];
  std::snprintf(buf, sizeof buf, i ? "%.2f%s" : "%.0f%s", n, names[i]);
  return buf;
}

// Significant digits of the floating-point numbers in --json.
constexpr int kJsonPrecision = 10;

PlanRequest read_request(const po::variables_map& vm) {
  PlanRequest r;
  parse_mesh_shape(vm["mesh"].as<std::string>(), "--mesh", &r.opt.data, &r.opt.model);
  r.opt.batch_tokens = vm["batch-tokens"].as<int64_t>();
  // 2^36 tokens per step: a thousand times the paper's batch, and the plan's byte sums stay inside int64
  GLAM_REQUIRE(r.opt.batch_tokens >= 0 && r.opt.batch_tokens <= (int64_t{1} << 36),
               "--batch-tokens must be from 0 (the config's batch) to 2^36, got ", r.opt.batch_tokens);
  const std::string act = vm["activations"].as<std::string>();
  GLAM_REQUIRE(act == "fp32" || act == "bf16", "--activations must be fp32 or bf16, got '", act, "'");
  r.opt.act_bytes = act == "fp32" ? 4 : 2;
  r.opt.kept_fraction = vm["kept-fraction"].as<double>();
  GLAM_REQUIRE(r.opt.kept_fraction > 0 && r.opt.kept_fraction <= 1, "--kept-fraction must be in (0, 1], got ",
               r.opt.kept_fraction);
  r.cluster = vm.count("cluster") ? Cluster::load(vm["cluster"].as<std::string>()) : Cluster::measure_local();
  if (vm.count("device-memory")) {
    r.device_memory = parse_bytes(vm["device-memory"].as<std::string>(), "--device-memory");
  } else {  // the cluster's device; time-shared devices split their memory between ranks
    const double ranks = double(r.opt.data) * r.opt.model;
    const double share = r.cluster.time_share && ranks > r.cluster.devices ? r.cluster.devices / ranks : 1.0;
    r.device_memory = static_cast<int64_t>(r.cluster.memory_gib * 1073741824.0 * share);
  }
  r.json = vm["json"].as<bool>();
  return r;
}

void print_report(const Plan& p, const StepPrediction& s, const PlanRequest& r, int64_t max_batch) {
  const MemoryPlan& m = p.memory;
  const CommPlan& c = p.comm;
  std::printf("# glam plan: %s on mesh %dx%d (%d ranks), %lld tokens per step\n", p.config.c_str(), p.data, p.model,
              p.data * p.model, static_cast<long long>(p.tokens_per_step));
  std::printf("parameters       %s in all (n_params %lld), %s activated per token (n_act_params %lld)\n",
              count(double(p.n_params)).c_str(), static_cast<long long>(p.n_params),
              count(double(p.n_act_params)).c_str(), static_cast<long long>(p.n_act_params));
  std::printf("FLOPs per token  forward %.3g, training %.3g (matmuls and attention; training = 3 x forward)\n",
              p.forward_flops_per_token, p.train_flops_per_token);
  std::printf("per rank         %lld tokens, %lld routed choices, %s parameter elements, %.3g FLOPs per step\n",
              static_cast<long long>(p.tokens_per_rank), static_cast<long long>(p.rows_per_rank),
              count(double(p.local_params)).c_str(), p.train_flops_per_rank);
  if (p.micro_steps > 1)
    std::printf("micro-steps      %lld of %lld tokens per rank (train.micro_rows), gradients accumulating\n",
                static_cast<long long>(p.micro_steps), static_cast<long long>(p.tokens_per_micro));
  if (p.recompute_flops_per_rank > 0)
    std::printf("remat            %.3g FLOPs per step per rank recomputed in the backward (not in MFU)\n",
                p.recompute_flops_per_rank);
  std::printf("\nmemory per rank (fp32 weights, gradients, Adafactor state; %s activations)\n",
              r.opt.act_bytes == 4 ? "fp32" : "bf16");
  const std::pair<const char*, int64_t> rows[] = {{"weights", m.weights},         {"gradients", m.gradients},
                                                  {"optimizer", m.optimizer},     {"activations", m.activations},
                                                  {"dispatch", m.dispatch}};
  for (const auto& row : rows) std::printf("  %-12s %12s\n", row.first, format_bytes(double(row.second)).c_str());
  const bool fits = m.total() <= r.device_memory;
  std::printf("  %-12s %12s of %s: %s\n", "total", format_bytes(double(m.total())).c_str(),
              format_bytes(double(r.device_memory)).c_str(), fits ? "fits" : "DOES NOT FIT");
  if (max_batch > 0)
    std::printf("  %-12s %lld tokens per %s (--batch-tokens)\n", "largest fit", static_cast<long long>(max_batch),
                p.micro_steps > 1 ? "micro-step of the mesh" : "step");
  else
    std::printf("  %-12s none: not even one row per data rank fits; widen the mesh\n", "largest fit");
  std::printf("\ncommunication per rank per step (as glam train counts it)\n");
  std::printf("  %-26s %12s  (%lld calls)\n", "all-to-all over data", format_bytes(double(c.alltoall)).c_str(),
              static_cast<long long>(c.alltoall_calls));
  std::printf("  %-26s %12s\n", "all-reduce over data", format_bytes(double(c.allreduce_data)).c_str());
  std::printf("  %-26s %12s\n", "all-reduce over model", format_bytes(double(c.allreduce_model)).c_str());
  std::printf("  %-26s %12s\n", "all-reduce expert replicas", format_bytes(double(c.allreduce_replicas)).c_str());
  if (c.reduce_scatter > 0) {
    std::printf("  %-26s %12s  (train.shard_state, every micro-step)\n", "reduce-scatter over data",
                format_bytes(double(c.reduce_scatter)).c_str());
    if (c.allgather_first > 0)
      std::printf("  %-26s %12s  (train.shard_weights, every layer before use)\n", "all-gather over data",
                  format_bytes(double(c.allgather)).c_str());
    else
      std::printf("  %-26s %12s\n", "all-gather over data", format_bytes(double(c.allgather)).c_str());
  }
  const Cluster& k = r.cluster;
  std::printf("\npredicted step on %s (%s): %lld devices, %.4g TFLOP/s peak x %.2f, %.4g GB/s memory, "
              "%.4g / %.4g GB/s intra / inter node\n",
              k.name.c_str(), k.source.c_str(), static_cast<long long>(k.devices), k.peak_tflops, k.achievable,
              k.memory_gbps, k.intra_node_gbps, k.inter_node_gbps);
  if (s.share > 1.0) std::printf("  (%.2f ranks per device: time-shared)\n", s.share);
  std::printf("  matmuls %.4g s, elementwise %.4g s, all-to-all %.4g s, all-reduce data %.4g s, model %.4g s, "
              "latency %.4g s\n",
              s.matmul_s, s.elementwise_s, s.alltoall_s, s.allreduce_data_s, s.allreduce_model_s, s.latency_s);
  if (s.hidden_s > 0)
    std::printf("  overlap %.4g s of the reduce-scatters%s run behind the layers (train.shard_state), taken off\n",
                s.hidden_s, c.allgather_first > 0 ? " and all-gathers" : "");
  if (p.exchange_chunks > 1)
    std::printf("  all-to-all in %lld chunks (train.exchange_chunks): %.4g s of %.4g s exposed, %.4g s behind the "
                "experts, taken off\n",
                static_cast<long long>(p.exchange_chunks), s.alltoall_exposed_s, s.alltoall_s, s.alltoall_hidden_s);
  std::printf("  step %.4g s, %.4g tokens/s, MFU %.1f%%\n", s.step_s, s.tokens_per_s, 100.0 * s.mfu);
}

void print_json(const Plan& p, const StepPrediction& s, const PlanRequest& r, int64_t max_batch) {
  const MemoryPlan& m = p.memory;
  const CommPlan& c = p.comm;
  ordered_json j;
  j["config"] = p.config;
  j["mesh"] = msg(p.data, "x", p.model);
  j["ranks"] = p.data * p.model;
  j["n_params"] = p.n_params;
  j["n_act_params"] = p.n_act_params;
  j["tokens_per_step"] = p.tokens_per_step;
  j["tokens_per_rank"] = p.tokens_per_rank;
  j["micro_steps"] = p.micro_steps;
  j["tokens_per_micro"] = p.tokens_per_micro;
  j["routed_per_rank"] = p.rows_per_rank;
  j["local_params"] = p.local_params;
  j["forward_flops_per_token"] = p.forward_flops_per_token;
  j["train_flops_per_token"] = p.train_flops_per_token;
  j["train_flops_per_rank"] = p.train_flops_per_rank;
  j["memory"] = {{"weights", m.weights},         {"gradients", m.gradients},
                 {"optimizer", m.optimizer},     {"activations", m.activations},
                 {"dispatch", m.dispatch},       {"total", m.total()},
                 {"device", r.device_memory},    {"fits", m.total() <= r.device_memory},
                 {"max_batch_tokens", max_batch}};
  j["comm"] = {{"alltoall_bytes", c.alltoall},
               {"allreduce_data_bytes", c.allreduce_data},
               {"allreduce_model_bytes", c.allreduce_model},
               {"allreduce_replica_bytes", c.allreduce_replicas},
               {"reduce_scatter_bytes", c.reduce_scatter},
               {"allgather_bytes", c.allgather}, {"allgather_first_bytes", c.allgather_first}};
  j["predicted"] = {{"cluster", r.cluster.name},       {"share", s.share},
                    {"matmul_s", s.matmul_s},          {"elementwise_s", s.elementwise_s},
                    {"hidden_s", s.hidden_s},
                    {"alltoall_s", s.alltoall_s},      {"alltoall_exposed_s", s.alltoall_exposed_s},
                    {"allreduce_data_s", s.allreduce_data_s},
                    {"allreduce_model_s", s.allreduce_model_s}, {"latency_s", s.latency_s},
                    {"step_s", s.step_s},              {"tokens_per_s", s.tokens_per_s},
                    {"mfu", s.mfu}};
  std::printf("%s\n", json_line(j, kJsonPrecision).c_str());
}

// Every D x M mesh of the cluster's devices: memory, fit and predicted step, or why
// the model cannot be laid out on it.
void print_all_meshes(const Config& cfg, PlanRequest req) {
  const int64_t n = req.cluster.devices;
  ordered_json js = {{"config", cfg.source}, {"cluster", req.cluster.name}, {"meshes", ordered_json::array()}};
  if (!req.json)
    std::printf("# glam plan: %s on every mesh of the %lld devices of %s (%s)\n%8s %12s %5s %9s %11s %6s\n",
                cfg.source.c_str(), static_cast<long long>(n), req.cluster.name.c_str(), req.cluster.source.c_str(),
                "mesh", "memory/rank", "fits", "step s", "tokens/s", "MFU");
  for (int64_t m = 1; m <= n; m++) {
    if (n % m) continue;
    req.opt.data = static_cast<int>(n / m);
    req.opt.model = static_cast<int>(m);
    const std::string mesh = msg(req.opt.data, "x", req.opt.model);
    ordered_json row = {{"mesh", mesh}};
    try {
      const Plan p = make_plan(cfg, req.opt);
      const StepPrediction s = predict_step(p, req.cluster);
      const bool fits = p.memory.total() <= req.device_memory;
      row["total"] = p.memory.total();
      row["fits"] = fits;
      row["step_s"] = s.step_s;
      row["tokens_per_s"] = s.tokens_per_s;
      row["mfu"] = s.mfu;
      if (!req.json)
        std::printf("%8s %12s %5s %9.4g %11.4g %5.1f%%\n", mesh.c_str(), format_bytes(double(p.memory.total())).c_str(),
                    fits ? "yes" : "no", s.step_s, s.tokens_per_s, 100.0 * s.mfu);
    } catch (const UserError& e) {
      row["error"] = e.what();
      if (!req.json) std::printf("%8s cannot run: %s\n", mesh.c_str(), e.what());
    }
    js["meshes"].push_back(std::move(row));
  }
  if (req.json) std::printf("%s\n", json_line(js, kJsonPrecision).c_str());
}

}  // namespace

int plan_main(const std::vector<std::string>& args) {
  po::options_description cli("glam plan --config FILE [options] [--section.key value ...]");
  cli.add_options()
    ("help,h", "show this help")
    ("config", po::value<std::string>(), "INI config file (e.g. input/glam-64b-64e.cfg)")
    ("mesh", po::value<std::string>()->default_value("1x1"), "device mesh DxM (data x model)")
    ("batch-tokens", po::value<int64_t>()->default_value(0), "global tokens per step (default: train.batch_rows x model.seq_len)")
    ("device-memory", po::value<std::string>(), "memory of one rank, e.g. 80GiB (default: the cluster's)")
    ("cluster", po::value<std::string>(), "cluster INI file (input/clusters/*.ini; default: this machine, measured)")
    ("activations", po::value<std::string>()->default_value("fp32"), "activation storage: fp32 (the CPU path) | bf16")
    ("kept-fraction", po::value<double>()->default_value(1.0), "routing choices kept after capacity (1: balanced)")
    ("all-meshes", po::bool_switch(), "every D x M mesh of the cluster's devices instead of --mesh")
    ("json", po::bool_switch(), "print one JSON object instead of the report");
  Config cfg;
  po::variables_map vm = parse_args(args, cli, cfg);
  if (vm.count("help")) {
    std::cout << cli << "\n";
    return 0;
  }
  GLAM_REQUIRE(vm.count("config"), "glam plan: --config is required");
  const PlanRequest req = read_request(vm);
  int rank = 0;
  GLAM_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  if (vm["all-meshes"].as<bool>()) {
    if (rank == 0) print_all_meshes(cfg, req);
    return 0;
  }
  const Plan plan = make_plan(cfg, req.opt);
  const StepPrediction step = predict_step(plan, req.cluster);
  if (rank != 0) return 0;
  const int64_t max_batch = largest_fitting_batch(cfg, req.opt, req.device_memory);
  if (req.json) print_json(plan, step, req, max_batch);
  else print_report(plan, step, req, max_batch);
  return 0;
}

}  // namespace glam
