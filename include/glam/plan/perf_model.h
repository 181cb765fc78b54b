// A performance model of one training step: the plan's FLOPs, memory traffic and
// bytes on a described cluster (an INI file, input/clusters/*.ini) or on this
// machine (measured). Its assumptions are written down in docs/PLAN.md:
//   step = matmuls + elementwise + communication, nothing overlapped (as the code runs);
//   matmuls at `achievable` x peak; elementwise work streams activations 3 times and
//   the optimizer 6 floats per parameter through memory; all-reduces are rings
//   (2 (p-1)/p of the bytes on the wire); an all-to-all sends over NVLink to peers in
//   the node and over the network to the others, both at once; every collective
//   call pays `latency_us`; ranks beyond the devices time-share them (CPU cores).
#pragma once
#include <cstdint>
#include <string>

#include "glam/plan/plan.h"

namespace glam {

struct Cluster {
  std::string name = "local";
  std::string source;              // file it came from, or "measured"
  int64_t devices = 1;             // GPUs (or CPU cores) in all
  int64_t devices_per_node = 1;
  double peak_tflops = 0.0;        // per device, in the precision of the matmuls
  double achievable = 0.6;         // fraction of peak large matmuls reach
  double memory_gib = 80.0;        // per device
  double memory_gbps = 0.0;        // per device: HBM (or DRAM per core) bandwidth, GB/s
  double intra_node_gbps = 0.0;    // per device, one direction (NVLink; shared memory)
  double inter_node_gbps = 0.0;    // per device, one direction (network)
  double latency_us = 5.0;         // per collective call
  bool time_share = false;         // more ranks than devices share them (CPU cores)

  // Reads [cluster] keys from an INI file; UserError naming the file and key.
  static Cluster load(const std::string& path);
  // This machine: cores, memory, one core's best sgemm rate and memcpy bandwidth (~0.1 s).
  static Cluster measure_local();
};

struct StepPrediction {
  double share = 1.0;              // ranks per device when time-shared
  double matmul_s = 0.0, elementwise_s = 0.0;
  double alltoall_s = 0.0, allreduce_data_s = 0.0, allreduce_model_s = 0.0, latency_s = 0.0;
  // train.shard_state: the reduce-scatters of layers L-1..1 run behind the backward
  // of the layer below (the code's non-blocking windows), at most that backward's
  // time; train.shard_weights: each layer's all-gather behind the layer before it
  double hidden_s = 0.0;
  // train.exchange_chunks: the part of alltoall_s that stays exposed (all of it for
  // one chunk) and the rest, behind the expert compute (docs/PLAN.md)
  double alltoall_exposed_s = 0.0, alltoall_hidden_s = 0.0;
  double step_s = 0.0, tokens_per_s = 0.0;
  double mfu = 0.0;                // model FLOPs per second / (devices used x peak)
  double comm_s() const { return alltoall_s + allreduce_data_s + allreduce_model_s + latency_s; }
};

// The exposed part of one block's all-to-all of a seconds in k chunks beside e
// seconds of expert compute: a / k + max(0, (k - 1) a / k - e) (docs/PLAN.md).
double chunked_alltoall_exposed(double a, double e, int64_t k);

// UserError when the mesh needs more devices than the cluster has (unless time-shared).
StepPrediction predict_step(const Plan& plan, const Cluster& cluster);

}  // namespace glam
