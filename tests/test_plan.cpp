// glam plan's resource model (src/plan/plan.cpp, src/plan/perf_model.cpp) against the code it
// describes and against relations derived here independently:
//  - n_params / n_act_params equal count_params and the parameter table's sizes, and
//    the paper's 64B/64E row (1,161.8B and 96.6B, Table 4);
//  - weights and Adafactor state per rank equal what build_params and Adafactor
//    really allocate on each mesh shape;
//  - forward FLOPs per token = 2 x (activated matmul weights) + attention 4 S A L
//    (every activated weight but the norms and relative biases is one multiply-add
//    per token; the tied embedding is used once, by the output logits);
//  - communication: a dense model on D x 1 all-reduces every gradient; experts
//    replicated (E < D) sum over their replicas; no data axis, no all-to-all;
//  - the step-time model on hand-built clusters; sizes and meshes from text.
// (Bytes against a real multi-rank run: tests/plan/plan_vs_run.py.)
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "glam/model/adafactor.h"
#include "glam/base/check.h"
#include "glam/plan/perf_model.h"
#include "glam/plan/plan.h"

using namespace glam;

namespace {

Config tiny(int64_t experts) {
  Config c;
  c.source = "test";
  c.model.vocab_size = 96;
  c.model.d_model = 128;
  c.model.n_layers = 4;
  c.model.n_heads = 4;
  c.model.d_head = 8;
  c.model.d_ff = 256;     // >= 128: the expert and FFN matrices are factored
  c.model.n_experts = experts;
  c.model.seq_len = 16;
  c.model.group_size = 16;
  c.train.batch_rows = 8;
  return c;
}

Mesh sized(int d, int m) {
  Mesh mesh;
  mesh.data_size = d;
  mesh.model_size = m;
  return mesh;
}

PlanOptions on(int d, int m) {
  PlanOptions o;
  o.data = d;
  o.model = m;
  return o;
}

}  // namespace

TEST_CASE("parameter counts equal count_params and the parameter table", "[plan]") {
  for (int64_t E : {0, 4}) {
    const Config c = tiny(E);
    const Plan p = make_plan(c, on(1, 1));
    CHECK(p.n_params == count_params(c.model));
    CHECK(p.n_act_params == count_activated_params(c.model));
    int64_t total = 0;
    for (const Param& q : describe_params(c.model, sized(1, 1)).params) total += q.global_size();
    CHECK(p.n_params == total);
    CHECK(p.local_params == total);
  }
}

TEST_CASE("the paper's 64B/64E row with a 256K vocabulary", "[plan]") {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = 256000; m.d_model = 8192; m.n_layers = 64; m.n_heads = 128; m.d_head = 128;
  m.d_ff = 32768; m.n_experts = 64; m.seq_len = 1024; m.group_size = 1024;
  c.train.batch_rows = 1024;
  const Plan p = make_plan(c, on(64, 16));
  CHECK(std::round(p.n_params / 1e8) == 11618);      // 1,161.8B
  CHECK(std::round(p.n_act_params / 1e8) == 966);    // 96.6B (Table 4; exactly 96,604,528,640)
  CHECK(p.tokens_per_rank == 1024 * 1024 / 64);
}

TEST_CASE("weights and optimizer state per rank equal the real allocations", "[plan]") {
  struct Shape { int d, m; int64_t E; };
  for (Shape s : {Shape{1, 1, 4}, Shape{2, 1, 4}, Shape{1, 2, 4}, Shape{2, 2, 4}, Shape{4, 1, 2}, Shape{2, 2, 0}}) {
    CAPTURE(s.d, s.m, s.E);
    const Config c = tiny(s.E);
    const Plan p = make_plan(c, on(s.d, s.m));
    const ParamTable table = build_params(c.model, sized(s.d, s.m));
    CHECK(p.memory.weights == 4 * table.local_size());
    CHECK(p.memory.gradients == 4 * table.local_size());
    const Adafactor opt(table, AdafactorOptions::from(c.train));
    int64_t state = 0;
    for (const AdafactorSlot& slot : opt.slots()) state += int64_t(slot.v.size() + slot.vr.size() + slot.vc.size());
    CHECK(p.memory.optimizer == 4 * state);
    CHECK(state < table.local_size());  // factoring saves most of the second moment here
  }
}

TEST_CASE("forward FLOPs per token from the activated parameters", "[plan]") {
  for (int64_t E : {0, 4}) {
    const Config c = tiny(E);
    const ModelConfig& m = c.model;
    const Plan p = make_plan(c, on(1, 1));
    const double not_matmul = double(m.n_layers) * (2 * m.d_model + m.n_heads * 32) + m.d_model;
    const double expected = 2.0 * (double(count_activated_params(m)) - not_matmul) +
                            4.0 * m.seq_len * m.n_heads * m.d_head * m.n_layers;
    CHECK(p.forward_flops_per_token == Approx(expected).epsilon(1e-12));
    CHECK(p.train_flops_per_token == Approx(3 * expected).epsilon(1e-12));
    // one rank computes the whole model
    CHECK(p.train_flops_per_rank == Approx(p.train_flops_per_token * p.tokens_per_step).epsilon(1e-12));
    // on D x 1 the ranks share the work exactly; on 1 x 2 the router runs on both
    const Plan d2 = make_plan(c, on(2, 1));
    CHECK(2 * d2.train_flops_per_rank == Approx(p.train_flops_per_rank).epsilon(1e-12));
    const Plan m2 = make_plan(c, on(1, 2));
    const double router = 3.0 * 2 * p.tokens_per_step * m.d_model * m.n_experts * m.n_moe_layers();
    CHECK(2 * m2.train_flops_per_rank == Approx(p.train_flops_per_rank + router).epsilon(1e-12));
  }
}

TEST_CASE("communication per rank follows the mesh", "[plan]") {
  const Plan one = make_plan(tiny(4), on(1, 1));
  CHECK(one.comm.alltoall == 0);
  CHECK(one.comm.allreduce_data == 0);
  CHECK(one.comm.allreduce_model == 0);

  const Plan dense = make_plan(tiny(0), on(4, 1));  // every gradient is replicated over data
  CHECK(dense.comm.alltoall == 0);
  CHECK(dense.comm.allreduce_data == 4 * dense.n_params);

  const Config c = tiny(2);  // 2 experts on 4 data ranks: 2 replicas each
  const Plan rep = make_plan(c, on(4, 1));
  const int64_t M = c.model.d_model, H = c.model.d_ff, n_moe = c.model.n_moe_layers();
  CHECK(rep.comm.allreduce_replicas == 4 * n_moe * 2 * M * H);  // one expert's wi and wo per MoE layer
  CHECK(rep.comm.allreduce_data + rep.comm.allreduce_replicas == 4 * rep.local_params);
  // half of a rank's choices go to the other expert (on another rank), 4 exchanges per layer
  CHECK(rep.comm.alltoall == 4 * n_moe * rep.rows_per_rank / 2 * M * 4);
  CHECK(rep.rows_per_rank == 2 * rep.tokens_per_rank);

  PlanOptions kept = on(4, 1);
  kept.kept_fraction = 0.75;
  CHECK(make_plan(c, kept).comm.alltoall == Approx(0.75 * rep.comm.alltoall));
}

TEST_CASE("meshes and batches that do not fit the model are refused", "[plan]") {
  CHECK_THROWS_WITH(make_plan(tiny(4), on(1, 3)), Catch::Contains("do not split over 3 model ranks"));
  Config six = tiny(4);
  six.train.batch_rows = 6;
  CHECK_THROWS_WITH(make_plan(six, on(6, 1)), Catch::Contains("4 experts cannot be placed"));
  CHECK_THROWS_WITH(make_plan(tiny(4), on(3, 1)), Catch::Contains("must split over the 3 data ranks"));
  PlanOptions odd = on(1, 1);
  odd.batch_tokens = 100;
  CHECK_THROWS_WITH(make_plan(tiny(4), odd), Catch::Contains("--batch-tokens 100 must be a multiple"));
}

TEST_CASE("sizes and mesh shapes from text", "[plan]") {
  CHECK(parse_bytes("80GiB", "--device-memory") == 80LL << 30);
  CHECK(parse_bytes("80GB", "--device-memory") == 80000000000LL);
  CHECK(parse_bytes("1.5TiB", "--device-memory") == 3LL << 39);
  CHECK(parse_bytes("4096", "--device-memory") == 4096);
  for (const char* bad : {"80XB", "GiB", "-1GiB", "80 GiB", "0"})
    CHECK_THROWS_WITH(parse_bytes(bad, "--device-memory"), Catch::StartsWith("--device-memory: expected"));
  int d = 0, m = 0;
  parse_mesh_shape("64x16", "--mesh", &d, &m);
  CHECK((d == 64 && m == 16));
  for (const char* bad : {"4", "2x", "0x2", "2x2x2", "axb"})
    CHECK_THROWS_WITH(parse_mesh_shape(bad, "--mesh", &d, &m), Catch::StartsWith("--mesh: expected DxM"));
}

TEST_CASE("step time on a described cluster", "[plan]") {
  Cluster k;
  k.name = "hand";
  k.devices = 4; k.devices_per_node = 2;
  k.peak_tflops = 1.0; k.achievable = 0.5;
  k.memory_gbps = 100; k.intra_node_gbps = 10; k.inter_node_gbps = 1; k.latency_us = 0;
  const Plan one = make_plan(tiny(4), on(1, 1));
  const StepPrediction s1 = predict_step(one, k);
  CHECK(s1.matmul_s == Approx(one.train_flops_per_rank / 0.5e12));
  CHECK(s1.comm_s() == 0.0);
  CHECK(s1.step_s == Approx(s1.matmul_s + s1.elementwise_s));
  CHECK(s1.tokens_per_s == Approx(one.tokens_per_step / s1.step_s));
  CHECK(s1.mfu < 0.5);  // below the achievable fraction: elementwise work counts too

  // 2 model ranks inside a node: a ring all-reduce moves 2 (p-1)/p = 1 x the bytes at 10 GB/s
  const Plan tp = make_plan(tiny(4), on(1, 2));
  CHECK(predict_step(tp, k).allreduce_model_s == Approx(tp.comm.allreduce_model / 10e9));
  // 4 data ranks over 2 nodes: the gradients cross the network; one of three peers is local
  const Plan dp = make_plan(tiny(4), on(4, 1));
  const StepPrediction s4 = predict_step(dp, k);
  CHECK(s4.allreduce_data_s == Approx(1.5 * dp.comm.allreduce_data / 1e9));
  CHECK(s4.alltoall_s == Approx(dp.comm.alltoall * (2.0 / 3.0) / 1e9));

  CHECK_THROWS_WITH(predict_step(make_plan(tiny(4), on(8, 1)), k), Catch::Contains("needs 8 devices"));
  k.time_share = true;
  CHECK(predict_step(make_plan(tiny(4), on(8, 1)), k).share == 2.0);
}

TEST_CASE("cluster files", "[plan]") {
  const std::string path = "test_plan_cluster.ini";
  const std::string good =
      "[cluster]\nname = two\ndevices = 16\ndevices_per_node = 8\npeak_tflops = 100\nachievable = 0.5\n"
      "memory_gib = 40\nmemory_gbps = 1000\nintra_node_gbps = 100\ninter_node_gbps = 10\n";
  std::ofstream(path) << good;
  const Cluster k = Cluster::load(path);
  CHECK(k.name == "two");
  CHECK(k.devices == 16);
  CHECK(k.inter_node_gbps == 10.0);
  std::ofstream(path) << good << "bogus = 1\n";
  CHECK_THROWS_WITH(Cluster::load(path), Catch::Contains("cluster.bogus"));
  std::ofstream(path) << "[cluster]\ndevices = 16\n";
  CHECK_THROWS_WITH(Cluster::load(path), Catch::Contains("cluster file test_plan_cluster.ini"));
  std::ofstream(path) << good << "achievable = 1.5\n";
  CHECK_THROWS(Cluster::load(path));
  std::remove(path.c_str());
  CHECK_THROWS_WITH(Cluster::load("no/such.ini"), Catch::Contains("cannot open cluster file 'no/such.ini'"));
}

TEST_CASE("this machine, measured", "[plan]") {
  const Cluster k = Cluster::measure_local();
  CHECK(k.devices >= 1);
  CHECK(k.devices_per_node == k.devices);
  CHECK(k.time_share);
  CHECK(k.peak_tflops > 1e-4);   // one core does far more than 0.1 GFLOP/s in sgemm
  CHECK(k.peak_tflops < 10.0);   // and far less than 10 TFLOP/s
  CHECK(k.memory_gbps > 0.1);
  CHECK(k.intra_node_gbps < k.memory_gbps);
  CHECK(k.memory_gib > 0.0);
  // a plan on it: four ranks on fewer cores share them
  const StepPrediction s = predict_step(make_plan(tiny(4), on(4, 1)), k);
  CHECK(s.share == (k.devices < 4 ? 4.0 / double(k.devices) : 1.0));
  CHECK(s.step_s > 0.0);
}

TEST_CASE("the largest batch that fits", "[plan]") {
  const Config c = tiny(4);
  const int64_t unit = 16 * 2;  // tokens per data rank: seq_len 16, routing groups of 16; 2 data ranks
  PlanOptions o = on(2, 2);
  o.batch_tokens = 40 * unit;
  const int64_t budget = make_plan(c, o).memory.total() + 1000;  // a little over 40 units' worth
  const int64_t best = largest_fitting_batch(c, on(2, 2), budget);
  CHECK(best == 40 * unit);
  o.batch_tokens = best + unit;
  CHECK(make_plan(c, o).memory.total() > budget);
  o.batch_tokens = unit;
  CHECK(largest_fitting_batch(c, on(2, 2), make_plan(c, o).memory.total() - 1) == 0);
}

TEST_CASE("micro-steps divide activations and dispatch buffers, not the bytes a step moves", "[plan][micro]") {
  Config c = tiny(4);
  const Plan one = make_plan(c, on(2, 2));  // 4 rows per data rank
  c.train.micro_rows = 1;
  const Plan four = make_plan(c, on(2, 2));
  CHECK(four.micro_steps == 4);
  CHECK(four.tokens_per_micro * 4 == one.tokens_per_rank);
  CHECK(four.memory.weights == one.memory.weights);
  CHECK(four.memory.gradients == one.memory.gradients);
  CHECK(four.memory.dispatch * 4 == one.memory.dispatch);
  CHECK(four.memory.activations < one.memory.activations / 3);
  CHECK(four.train_flops_per_rank == one.train_flops_per_rank);
  CHECK(four.comm.alltoall == one.comm.alltoall);
  CHECK(four.comm.allreduce_model == one.comm.allreduce_model);
  CHECK(four.comm.allreduce_data == one.comm.allreduce_data);  // the gradients cross the mesh once
  CHECK(four.comm.alltoall_calls == 4 * one.comm.alltoall_calls);
  c.train.micro_rows = 3;  // does not divide 4 rows per rank
  CHECK_THROWS_WITH(make_plan(c, on(2, 2)), Catch::Contains("train.micro_rows 3"));
}

TEST_CASE("remat keeps one layer's activations and each layer's input, and recomputes the forward",
          "[plan][remat]") {
  Config c = tiny(4);
  const Plan plain = make_plan(c, on(2, 2));
  c.train.remat = true;
  const Plan remat = make_plan(c, on(2, 2));
  CHECK(remat.memory.activations < plain.memory.activations);
  // 2 MoE layers of 4: eout and xin of each plus one ein and xout (6 [rows, M]) against one set of the four
  CHECK(remat.memory.dispatch * 6 == plain.memory.dispatch * 4);
  CHECK(remat.train_flops_per_rank == plain.train_flops_per_rank);  // model FLOPs
  CHECK(remat.recompute_flops_per_rank > 0.5 * plain.train_flops_per_rank / 3);  // 3 of 4 layers again
  CHECK(remat.comm.alltoall > plain.comm.alltoall);  // the recomputed MoE layer exchanges again
  CHECK(remat.comm.allreduce_data == plain.comm.allreduce_data);
}

TEST_CASE("shard_state splits the replicated gradients and state over data; bf16 exchanges halve the bytes",
          "[plan][savings]") {
  Config c = tiny(4);
  const Plan plain = make_plan(c, on(4, 1));
  c.train.shard_state = true;
  const Plan sharded = make_plan(c, on(4, 1));
  CHECK(sharded.memory.weights == plain.memory.weights);         // the CPU path keeps the whole weights
  CHECK(sharded.memory.gradients < plain.memory.gradients);  // the experts' are not replicated: they stay
  CHECK(sharded.memory.optimizer < plain.memory.optimizer);
  CHECK(sharded.comm.allreduce_data == 0);                        // every replicated tensor is sharded here
  CHECK(sharded.comm.reduce_scatter == plain.comm.allreduce_data);  // the same tensors, scattered
  CHECK(sharded.comm.allgather * 4 >= plain.comm.allreduce_data);  // data rank 0 holds the most rows
  CHECK(sharded.comm.allgather * 4 < plain.comm.allreduce_data * 5 / 4);
  CHECK(make_plan(c, on(1, 1)).memory.gradients == make_plan(tiny(4), on(1, 1)).memory.gradients);  // D = 1
  c.train.micro_rows = 1;  // every micro-step reduce-scatters its gradients
  const Plan micro = make_plan(c, on(4, 1));
  CHECK(micro.micro_steps > 1);
  CHECK(micro.comm.reduce_scatter == micro.micro_steps * sharded.comm.reduce_scatter);
  Config x = tiny(4);
  const Plan fp32 = make_plan(x, on(2, 2));
  x.train.exchange_dtype = "bf16";
  const Plan bf16 = make_plan(x, on(2, 2));
  CHECK(2 * bf16.comm.alltoall == fp32.comm.alltoall);
  CHECK(bf16.comm.allreduce_model < fp32.comm.allreduce_model * 51 / 100);  // the loss sums stay fp32
  CHECK(bf16.comm.allreduce_data == fp32.comm.allreduce_data);
}

TEST_CASE("chunked all-to-alls: the first send and last return exposed, the rest behind the experts",
          "[plan][chunks]") {
  // the formula: a / k + max(0, (k - 1) a / k - e) per block of a seconds of all-to-all
  CHECK(chunked_alltoall_exposed(1.0, 0.5, 1) == 1.0);
  CHECK(chunked_alltoall_exposed(1.0, 0.5, 2) == Approx(0.5));         // 0.5 behind 0.5 of compute
  CHECK(chunked_alltoall_exposed(1.0, 0.25, 2) == Approx(0.5 + 0.25));  // compute too short for the rest
  CHECK(chunked_alltoall_exposed(1.0, 10.0, 4) == Approx(0.25));
  Cluster k;
  k.name = "hand";
  k.devices = 4; k.devices_per_node = 2;
  k.peak_tflops = 1.0; k.achievable = 0.5;
  k.memory_gbps = 100; k.intra_node_gbps = 10; k.inter_node_gbps = 1; k.latency_us = 0;
  Config c = tiny(4);
  c.train.remat = true;  // recomputed forward blocks count too
  const Plan one = make_plan(c, on(4, 1));
  const StepPrediction s1 = predict_step(one, k);
  CHECK(s1.alltoall_exposed_s == s1.alltoall_s);  // k = 1: today's figure exactly
  CHECK(s1.alltoall_hidden_s == 0.0);
  c.train.exchange_chunks = 4;
  const Plan four = make_plan(c, on(4, 1));
  const StepPrediction s4 = predict_step(four, k);
  CHECK(four.comm.alltoall == one.comm.alltoall);  // the same bytes in 4 times the calls
  CHECK(four.comm.alltoall_calls == 4 * one.comm.alltoall_calls);
  CHECK(s4.alltoall_s == s1.alltoall_s);
  // by hand: MoE layers 0 and 2 of 4, remat recomputes both: 4 forward and 2 backward blocks
  CHECK(four.a2a_forward_blocks == 4);
  CHECK(four.a2a_backward_blocks == 2);
  const double a = s4.alltoall_s / 6, e = four.expert_block_flops / 0.5e12;
  CHECK(four.expert_block_flops == Approx(4.0 * four.rows_per_rank * 128 * 256));
  const double exposed = 4 * (a / 4 + std::max(0.0, 0.75 * a - e)) + 2 * (a / 4 + std::max(0.0, 0.75 * a - 2 * e));
  CHECK(s4.alltoall_exposed_s == Approx(exposed));
  CHECK(s4.alltoall_exposed_s >= s4.alltoall_s / 4);
  CHECK(s4.alltoall_exposed_s < s1.alltoall_s);
  // the packed rows in flight stream through memory too
  CHECK(s4.step_s == Approx(s1.step_s - s4.alltoall_hidden_s + s4.elementwise_s - s1.elementwise_s));
  CHECK(four.memory.dispatch > one.memory.dispatch);  // the packed rows in flight
}
