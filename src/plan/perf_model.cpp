// The performance model (see perf_model.h): a cluster description, read from an
// INI file or measured on this machine, and the predicted time of one step.
#include "glam/plan/perf_model.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include <boost/program_options.hpp>

#include "glam/base/check.h"

namespace po = boost::program_options;

namespace glam {

Cluster Cluster::load(const std::string& path) {
  Cluster c;
  c.source = path;
  po::options_description keys;
  // clang-format off
  keys.add_options()
    ("cluster.name", po::value(&c.name), "a name for reports")
    ("cluster.devices", po::value(&c.devices)->required(), "GPUs (or CPU cores) in all")
    ("cluster.devices_per_node", po::value(&c.devices_per_node)->required(), "devices per node")
    ("cluster.peak_tflops", po::value(&c.peak_tflops)->required(), "peak matmul TFLOP/s per device")
    ("cluster.achievable", po::value(&c.achievable)->required(), "fraction of peak large matmuls reach")
    ("cluster.memory_gib", po::value(&c.memory_gib)->required(), "device memory, GiB")
    ("cluster.memory_gbps", po::value(&c.memory_gbps)->required(), "device memory bandwidth, GB/s")
    ("cluster.intra_node_gbps", po::value(&c.intra_node_gbps)->required(), "per device, inside a node, GB/s")
    ("cluster.inter_node_gbps", po::value(&c.inter_node_gbps)->required(), "per device, across nodes, GB/s")
    ("cluster.latency_us", po::value(&c.latency_us), "per collective call, microseconds")
    ("cluster.time_share", po::value(&c.time_share), "ranks beyond the devices share them (true for CPU cores)");
  // clang-format on
  std::ifstream in(path);
  GLAM_REQUIRE(in, "--cluster: cannot open cluster file '", path, "'");
  po::variables_map vm;
  try {
    po::store(po::parse_config_file(in, keys, false), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UserError(msg("cluster file ", path, ": ", e.what()));
  }
  GLAM_REQUIRE(c.devices > 0 && c.devices_per_node > 0, "cluster file ", path,
               ": cluster.devices and cluster.devices_per_node must be positive");
  GLAM_REQUIRE(c.peak_tflops > 0 && c.memory_gib > 0 && c.memory_gbps > 0 && c.intra_node_gbps > 0 &&
                   c.inter_node_gbps > 0 && c.latency_us >= 0,
               "cluster file ", path, ": rates, sizes and bandwidths must be positive");
  GLAM_REQUIRE(c.achievable > 0 && c.achievable <= 1, "cluster file ", path,
               ": cluster.achievable must be in (0, 1], got ", c.achievable);
  return c;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The best of several short timings: other processes on a shared machine only
// ever slow a run down, so the fastest one is the closest to the machine's rate.
template <typename F>
double best_seconds(F f, int trials) {
  f();  // warm up
  double best = 1e30;
  for (int i = 0; i < trials; i++) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// One thread's sgemm rate in TFLOP/s on square matrices of n (the CPU path's matmuls).
double measure_sgemm_tflops(int n) {
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n, 0.0f);
  const int threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
  const double t = best_seconds([&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                c.data(), n);
  }, 10);
  openblas_set_num_threads(threads);
  return 2.0 * n * n * double(n) / t / 1e12;
}

// One thread's copy bandwidth in GB/s (bytes read + written per second).
double measure_copy_gbps(size_t bytes) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const double t = best_seconds([&] {
    std::memcpy(dst.data(), src.data(), bytes);
    src[dst[bytes / 2] % bytes] ^= 1;  // keep the copies observable
  }, 8);
  return 2.0 * double(bytes) / t / 1e9;
}

}  // namespace

Cluster Cluster::measure_local() {
  Cluster c;
  c.name = "this machine";
  c.source = "measured";
  c.devices = std::max(1u, std::thread::hardware_concurrency());
  c.devices_per_node = c.devices;
  c.time_share = true;
  const double ram = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  c.memory_gib = ram / double(c.devices) / 1073741824.0;
  c.peak_tflops = measure_sgemm_tflops(512);
  c.achievable = 0.7;  // glam-tiny on one rank against one 512^3 sgemm, calibrated (docs/PLAN.md)
  c.memory_gbps = measure_copy_gbps(size_t(64) << 20);
  // MPI over shared memory: a 2-rank MPI_Allreduce of 18.7 MB (glam-tiny's gradients)
  // ran at 0.8 GB/s on the development machine, 1/16 of one core's memcpy rate: the
  // reduction copies into a shared segment, sums and copies out, in small chunks.
  c.intra_node_gbps = c.memory_gbps / 16.0;
  c.inter_node_gbps = c.intra_node_gbps;
  c.latency_us = 3.0;
  return c;
}

// train.exchange_chunks = k: each block's all-to-all (a send, the experts, the
// return; time a) in k chunks. Exposed: the first chunk's send and the last one's
// return (a / k), and what of the other (k - 1) a / k exceeds the block's expert
// compute e: a / k + max(0, (k - 1) a / k - e); k = 1 gives a. A backward block's
// experts take twice a forward one's. docs/PLAN.md, assumption 1.
double chunked_alltoall_exposed(double a, double e, int64_t k) {
  const double kk = double(std::max<int64_t>(1, k));
  return a / kk + std::max(0.0, (kk - 1.0) * a / kk - e);
}

static void chunked_alltoall(StepPrediction& s, const Plan& p, double flops) {
  s.alltoall_exposed_s = s.alltoall_s;
  s.alltoall_hidden_s = 0.0;
  const int64_t blocks = p.a2a_forward_blocks + p.a2a_backward_blocks;
  if (p.exchange_chunks <= 1 || blocks == 0 || s.alltoall_s <= 0) return;
  const double a = s.alltoall_s / double(blocks), e = p.expert_block_flops / flops * s.share;
  s.alltoall_exposed_s = double(p.a2a_forward_blocks) * chunked_alltoall_exposed(a, e, p.exchange_chunks) +
                         double(p.a2a_backward_blocks) * chunked_alltoall_exposed(a, 2.0 * e, p.exchange_chunks);
  s.alltoall_hidden_s = s.alltoall_s - s.alltoall_exposed_s;
}

// train.shard_state: the reduce-scatters of layers L-1..1 run behind the backward
// (2/3 of the model FLOPs, plus what remat recomputes in it). train.shard_weights:
// every layer's all-gather but the step's first (the embedding's and layer 0's,
// allgather_first) runs behind the layer before it. Both share the data axis'
// links with the all-to-all, so together they hide behind at most the compute the
// chunked all-to-all has not used. docs/PLAN.md, assumption 1.
static void data_axis_overlap(StepPrediction& s, const Plan& p, double flops, double scatter_s, double gather_s) {
  if (scatter_s <= 0.0) return;
  const double backward_s = (2.0 / 3.0 * p.train_flops_per_rank + p.recompute_flops_per_rank) / flops * s.share;
  double hidden = std::min(scatter_s * double(p.n_layers - 1) / double(std::max<int64_t>(1, p.n_layers)), backward_s);
  if (p.comm.allgather_first > 0 && p.comm.allgather > 0)
    hidden += gather_s * double(p.comm.allgather - p.comm.allgather_first) / double(p.comm.allgather);
  s.hidden_s = std::min(hidden, std::max(0.0, s.matmul_s - s.alltoall_hidden_s));
}

StepPrediction predict_step(const Plan& p, const Cluster& c) {
  StepPrediction s;
  const int64_t ranks = int64_t(p.data) * p.model;
  GLAM_REQUIRE(c.time_share || ranks <= c.devices, "mesh ", p.data, "x", p.model, " needs ", ranks,
               " devices but cluster '", c.name, "' (", c.source, ") has ", c.devices);
  s.share = ranks > c.devices ? double(ranks) / double(c.devices) : 1.0;
  const double flops = c.peak_tflops * 1e12 * c.achievable;
  s.matmul_s = (p.train_flops_per_rank + p.recompute_flops_per_rank) / flops * s.share;  // MFU counts the first only
  // every micro-step writes and reads its own activations: micro_steps times what one holds
  const double streamed = 3.0 * double(p.memory.activations + p.memory.dispatch) * double(p.micro_steps) +
                          6.0 * 4.0 * double(p.local_params);
  s.elementwise_s = streamed / (c.memory_gbps * 1e9) * s.share;

  // A model group is consecutive ranks: inside a node when it fits in one.
  const double intra = c.intra_node_gbps * 1e9, inter = c.inter_node_gbps * 1e9;
  const double model_bw = p.model <= c.devices_per_node ? intra : inter;
  const int64_t data_in_node = std::min<int64_t>(p.data, std::max<int64_t>(1, c.devices_per_node / p.model));
  const double data_bw = data_in_node >= p.data ? intra : inter;
  auto ring = [](double bytes, int n) { return n > 1 ? 2.0 * (n - 1) / n * bytes : 0.0; };
  s.allreduce_model_s = ring(double(p.comm.allreduce_model), p.model) / model_bw * s.share;
  s.allreduce_data_s = ring(double(p.comm.allreduce_data + p.comm.allreduce_replicas), p.data) / data_bw * s.share;
  // train.shard_state: a ring reduce-scatter sends (n-1)/n of the tensor, a ring
  // all-gather n-1 times this rank's part
  double scatter_s = 0.0, gather_s = 0.0;
  if (p.data > 1 && p.comm.reduce_scatter > 0) {
    scatter_s = double(p.data - 1) / p.data * double(p.comm.reduce_scatter) / data_bw * s.share;
    gather_s = double(p.data - 1) * double(p.comm.allgather) / data_bw * s.share;
    s.allreduce_data_s += scatter_s + gather_s;
  }
  if (p.data > 1) {
    const double local = double(data_in_node - 1) / double(p.data - 1);  // peers in this node
    s.alltoall_s = std::max(double(p.comm.alltoall) * local / intra, double(p.comm.alltoall) * (1 - local) / inter) *
                   s.share;
  }
  chunked_alltoall(s, p, flops);
  data_axis_overlap(s, p, flops, scatter_s, gather_s);
  // an all-to-all is three calls (counts, the max of the row counts, the rows); in k
  // chunks k calls of rows after the counts (alltoall_calls counts the chunks)
  const int64_t k = std::max<int64_t>(1, p.exchange_chunks);
  const int64_t a2a_calls = k == 1 ? 3 * p.comm.alltoall_calls : p.comm.alltoall_calls + p.comm.alltoall_calls / k;
  const int64_t calls = a2a_calls + p.comm.allreduce_model_calls + p.comm.allreduce_data_calls;
  s.latency_s = double(calls) * c.latency_us * 1e-6 * (ranks > 1 ? 1.0 : 0.0);
  s.step_s = s.matmul_s + s.elementwise_s + s.comm_s() - s.hidden_s - s.alltoall_hidden_s;
  s.tokens_per_s = double(p.tokens_per_step) / s.step_s;
  const double used = double(std::min(ranks, c.devices));
  s.mfu = p.train_flops_per_token * s.tokens_per_s / (used * c.peak_tflops * 1e12);
  return s;
}

}  // namespace glam
