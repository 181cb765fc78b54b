// train.exchange_chunks: each MoE layer's all-to-all in k chunks that overlap the
// experts equals the one blocking exchange, on a D x M mesh (GLAM_TEST_MESH;
// tests/mpi/CMakeLists.txt runs 1x1, 2x1, 2x2 and 3x2).
//
// - The mesh's non-blocking all-to-all delivers what the blocking one does, bit for
//   bit (fp32 and bf16), counts the same bytes, and times its flight and the part
//   this rank spent waiting.
// - The chunks of an exchange plan partition every (source, destination, expert)
//   run, so every chunk is a valid exchange and the rows add up.
// - The model with k = 2 and 3 chunks, in fp32 and bf16 exchanges, plain and with
//   remat and micro-steps of 2 rows: over 3 Adafactor steps the loss terms and the
//   gradient norm within relative 1e-6 (bf16 exchanges: 2 steps, 1e-4, see below), the weights
//   within 1e-5 of their largest (bf16: 1e-3), the same drops (fp32); the all-to-all
//   moves the same bytes per step in k times the calls.
//   Not bit for bit: OpenBLAS sums a row's products in an order that depends on how
//   many rows a GEMM has (the first forward already differs in the 9th digit), and
//   the weight gradients are summed in k parts.
// No REQUIRE after the first collective.
#include <catch2/catch.hpp>

#include "rank_batch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>

#include "glam/model/adafactor.h"
#include "glam/model/micro_steps.h"
#include "glam/model/model.h"

using namespace glam;

namespace {

const Mesh& test_mesh() {
  static const Mesh mesh = [] {
    const char* shape = std::getenv("GLAM_TEST_MESH");
    return Mesh::create(shape ? shape : "");
  }();
  return mesh;
}

// 12 rows per step (D = 1, 2, 3), heads, hidden units and vocabulary split by M = 1, 2;
// 6 experts (2 or 3 per data rank, or all 6 on one), capacity drops some choices.
Config chunk_config() {
  Config c;
  c.model.vocab_size = 40;
  c.model.d_model = 24;
  c.model.n_layers = 3;  // MoE, GEGLU, MoE
  c.model.n_heads = 4;
  c.model.d_head = 6;
  c.model.d_ff = 16;
  c.model.n_experts = 6;
  c.model.group_size = 8;
  c.model.capacity_factor = 1.0;
  c.model.seq_len = 8;
  c.model.aux_loss_weight = 0.1;
  c.model.z_loss_weight = 0.01;
  c.train.batch_rows = 12;
  c.train.seed = 5;
  c.train.lr = 0.01;
  c.train.warmup_steps = 2;
  c.train.factored_min_dim = 8;
  c.validate();
  return c;
}

Batch rank_rows(const Config& c, const Mesh& mesh, int64_t step) {
  return test::random_rank_rows(c, mesh, 700 + step, 5, 3, 3);
}

using test::close;

}  // namespace

TEST_CASE("the non-blocking all-to-all delivers the blocking one's rows and bytes", "[chunks]") {
  const Mesh& mesh = test_mesh();
  const int D = mesh.data_size;
  const int64_t W = 7;  // floats per row; data rank r sends (r + 2q) % 3 rows to rank q (some none)
  std::vector<int64_t> send_rows(D), recv_rows(D);
  for (int q = 0; q < D; q++) {
    send_rows[q] = (mesh.data_rank + 2 * q) % 3;
    recv_rows[q] = (q + 2 * mesh.data_rank) % 3;
  }
  int64_t n_send = 0, n_recv = 0;
  for (int q = 0; q < D; q++) { n_send += send_rows[q]; n_recv += recv_rows[q]; }
  std::vector<float> send(n_send * W);
  for (size_t i = 0; i < send.size(); i++) send[i] = 1.0f + 0.0137f * static_cast<float>(mesh.data_rank * 1000 + i);
  for (const bool bf16 : {false, true}) {
    INFO("bf16 " << bf16);
    std::vector<float> blocking(n_recv * W, -1.0f), chunked(n_recv * W, -2.0f);
    const CommStats s0 = mesh.stats;
    if (bf16) mesh.alltoallv_rows_data_bf16(send.data(), send_rows, blocking.data(), recv_rows, W);
    else mesh.alltoallv_rows_data(send.data(), send_rows, blocking.data(), recv_rows, W);
    const CommStats s1 = mesh.stats;
    {
      AlltoallInFlight x;
      mesh.start_alltoallv_rows_data(send.data(), send_rows, chunked.data(), recv_rows, W, bf16, x);
      x.done();  // a test, then the wait
      x.wait();
      CHECK(x.done());
    }
    const CommStats s2 = mesh.stats;
    CHECK(chunked == blocking);
    CHECK(s2.alltoall_bytes - s1.alltoall_bytes == s1.alltoall_bytes - s0.alltoall_bytes);
    CHECK(s2.a2a_active == 0);
    if (D > 1) {
      CHECK(s2.alltoall_bytes - s1.alltoall_bytes > 0);
      CHECK(s2.a2a_nonblocking_calls - s1.a2a_nonblocking_calls == 1);
      CHECK(s2.alltoall_calls - s1.alltoall_calls == 1);
      CHECK(s2.a2a_inflight_seconds > s1.a2a_inflight_seconds);
      CHECK(s2.a2a_exposed_seconds > s1.a2a_exposed_seconds);
      CHECK(s1.alltoall_seconds > s0.alltoall_seconds);
    } else {
      CHECK(s2.a2a_nonblocking_calls == s1.a2a_nonblocking_calls);  // one data rank: copied, no MPI
    }
  }
}

TEST_CASE("the chunks of an exchange partition its rows", "[chunks]") {
  const Mesh& mesh = test_mesh();
  const Config cfg = chunk_config();
  Model model(cfg, mesh);
  model.set_step(0);
  model.forward(rank_rows(cfg, mesh, 0));
  const LayerActs& a = model.layer_acts()[0];
  for (const int64_t k : {1, 2, 3, 5}) {
    INFO("k " << k);
    const ChunkedExchange cx = plan_chunks(a.xplan, a.route.plan, model.experts(), mesh.data_rank, k);
    CHECK(cx.expert_first[k] == a.xplan.n_recv());
    CHECK(cx.packed_first[k] == a.xplan.n_send());
    std::vector<int64_t> send(mesh.data_size, 0), recv(a.xplan.recv_counts.size(), 0);
    for (const ExchangePlan& x : cx.chunk) {
      for (int q = 0; q < mesh.data_size; q++) send[q] += x.send_rows[q];
      for (size_t i = 0; i < recv.size(); i++) {
        recv[i] += x.recv_counts[i];
        // chunks differ by at most one row in every run
        CHECK(std::abs(x.recv_counts[i] * k - a.xplan.recv_counts[i]) < k);
      }
    }
    CHECK(send == a.xplan.send_rows);
    CHECK(recv == a.xplan.recv_counts);
  }
}

TEST_CASE("chunked exchanges give the one-call exchange's losses, gradients and bytes", "[chunks]") {
  const Mesh& mesh = test_mesh();
  struct Mode { int64_t chunks; const char* dtype; int64_t micro; bool remat; };
  const Mode modes[] = {{2, "fp32", 0, false}, {3, "fp32", 2, true}, {2, "bf16", 0, false}, {3, "bf16", 2, true}};
  for (const Mode& mode : modes) {
    INFO("mesh " << mesh.data_size << "x" << mesh.model_size << ", chunks " << mode.chunks << ", " << mode.dtype
                 << ", micro_rows " << mode.micro << ", remat " << mode.remat);
    Config cfg = chunk_config();
    cfg.train.exchange_dtype = mode.dtype;
    cfg.train.remat = mode.remat;
    Config with = cfg;
    with.train.exchange_chunks = mode.chunks;
    Model ref(cfg, mesh), model(with, mesh);
    Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
    Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
    // bf16: a difference in the 9th digit may round a value on the wire to its other
    // bf16 neighbour (2^-8 apart) and move a routing choice (3x2 with micro-steps: 3e-5
    // in the first loss, 1e-3 in the third step's gradient norm): two steps, 1e-4
    const bool bf16 = std::string(mode.dtype) == "bf16";
    const double rel = bf16 ? 1e-4 : 1e-6, wrel = bf16 ? 1e-3 : 1e-5;
    for (int64_t step = 0; step < (bf16 ? 2 : 3); step++) {
      INFO("step " << step);
      const Batch batch = rank_rows(cfg, mesh, step);
      ref.set_step(step);
      model.set_step(step);
      const CommStats s0 = mesh.stats;
      const LossParts rp = forward_backward(ref, batch, mode.micro, mesh);
      const CommStats s1 = mesh.stats;
      const LossParts mp = forward_backward(model, batch, mode.micro, mesh);
      const CommStats s2 = mesh.stats;
      CHECK(mp.loss == Approx(rp.loss).epsilon(rel));
      CHECK(mp.ce == Approx(rp.ce).epsilon(rel));
      CHECK(mp.aux == Approx(rp.aux).epsilon(rel));
      if (!bf16) CHECK(mp.dropped == rp.dropped);
      CHECK(model.grad_norm() == Approx(ref.grad_norm()).epsilon(rel));
      CHECK(s2.alltoall_bytes - s1.alltoall_bytes == s1.alltoall_bytes - s0.alltoall_bytes);
      CHECK(s2.allreduce_model_bytes - s1.allreduce_model_bytes == s1.allreduce_model_bytes - s0.allreduce_model_bytes);
      if (mesh.data_size > 1) {
        CHECK(s1.alltoall_bytes > s0.alltoall_bytes);
        CHECK(s2.alltoall_calls - s1.alltoall_calls == mode.chunks * (s1.alltoall_calls - s0.alltoall_calls));
        CHECK(s2.a2a_nonblocking_calls - s1.a2a_nonblocking_calls == s2.alltoall_calls - s1.alltoall_calls);
        CHECK(s1.a2a_nonblocking_calls == s0.a2a_nonblocking_calls);  // k = 1 stays blocking
      }
      CHECK(s2.a2a_active == 0);  // nothing left in flight
      const double lr = learning_rate(cfg.train, step + 1);
      ref.optimizer_step(ref_opt, lr, step);
      model.optimizer_step(opt, lr, step);
      for (size_t i = 0; i < ref.params().params.size(); i++) {
        INFO(ref.params().params[i].name);
        CHECK(close(model.params().params[i].w, ref.params().params[i].w, wrel));
      }
    }
  }
}

TEST_CASE("train.exchange_chunks is range-checked", "[chunks]") {
  Config c = chunk_config();
  c.train.exchange_chunks = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("train.exchange_chunks must be positive, got 0"));
  c.train.exchange_chunks = 65;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("train.exchange_chunks must be at most 64"));
  c.train.exchange_chunks = 4;
  CHECK_NOTHROW(c.validate());
}
