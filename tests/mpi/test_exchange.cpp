// The expert exchange over the data axis (plan_exchange, send_to_experts,
// return_from_experts) with IDENTITY experts, on an N x 1 mesh of all ranks
// (CTest runs it on 1, 2, 3 and 4 ranks).
//
// Every rank can rebuild every other rank's tokens, router logits and routing plan
// (they are drawn from (case, rank)), so the expected result of each exchange is
// computed locally, without communication:
//   - the rows a rank receives are, for each of its experts in turn and each source
//     rank in order, the source's dispatched rows of that expert (bitwise), with the
//     counts of the plan; with replicas, tokens of rank d go to replica d % R;
//   - forward: combine(return(identity(send(dispatch(x))))) gives out[t] = w1 x[t] + w2 x[t]
//     bitwise, and x[t] within 1e-6 relative when nothing is dropped (no_drop routing,
//     renormalised gates: w1 + w2 = 1 up to the 1e-9 of the renormalisation);
//   - backward: dispatch_backward(return(identity(send(combine_backward(dout))))) gives
//     dx[t] = w1 dout[t] + w2 dout[t] bitwise;
//   - mesh.stats.alltoall_bytes grows by the rows sent to OTHER ranks * M * 4 per call;
//   - with mesh.count_limit lowered (below one row, between a row and the payload, at
//     the payload) the results are bitwise those of the default path, and a limit
//     below the number of rows throws UserError on every rank (none hangs).
// Cases: random logits (with and without capacity drops), every token of every rank
// on the same two experts (the other experts' ranks receive nothing), rank-dependent
// logits (some ranks send nothing to some experts), and E in {2, 3, 4, 6, 8} wherever
// it can be placed: E > D (several experts per rank), E = D, E < D (replicas).
//
// No REQUIRE after the first collective: every rank runs the same collectives.
#include <catch2/catch.hpp>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "glam/base/check.h"
#include "glam/mesh/exchange.h"
#include "glam/mesh/mesh.h"
#include "glam/model/moe.h"

using namespace glam;
using Catch::Matchers::Contains;

namespace {

Mesh& data_mesh() {  // every rank on the data axis
  static Mesh mesh = Mesh::create("");
  return mesh;
}

enum class Logits { random, one_expert, per_rank };

struct Case {
  std::string name;
  int64_t E, T, M;
  Logits kind;
  bool no_drop = true;   // false: one group of T > 2E tokens, capacity C = 4 slots per
                         // expert (factor 0.5): 2T choices > E*C slots, so some drop
  uint64_t seed = 1;
};

// What data rank s holds; every rank can build it for every s.
struct Source {
  std::vector<float> x, logits, dout;  // [T, M], [T, E], [T, M]
  cpu::RoutingPlan plan;
  std::vector<float> ein;              // [rows, M] dispatched, router order
};

Source make_source(const Case& c, int s) {
  Source src;
  std::mt19937_64 rng(c.seed * 1000003 + static_cast<uint64_t>(s) * 7919 + 17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  src.x.resize(c.T * c.M);
  src.dout.resize(c.T * c.M);
  for (auto& v : src.x) v = normal(rng);
  for (auto& v : src.dout) v = normal(rng);
  src.logits.resize(c.T * c.E);
  const int64_t a = (2 * s) % c.E, b = (2 * s + 1) % c.E;  // per_rank: this rank's two experts
  for (int64_t t = 0; t < c.T; t++)
    for (int64_t e = 0; e < c.E; e++) {
      float& l = src.logits[t * c.E + e];
      switch (c.kind) {
        case Logits::random: l = 2.0f * normal(rng); break;
        case Logits::one_expert: l = e == 0 ? 8.0f : e == 1 ? 4.0f : 0.1f * normal(rng); break;
        case Logits::per_rank: l = e == a ? 6.0f + normal(rng) : e == b ? 3.0f : 0.3f * normal(rng); break;
      }
    }
  cpu::RouterOptions opt;
  opt.n_experts = c.E;
  opt.no_drop = c.no_drop;
  opt.group_size = c.T;
  opt.capacity_factor = 0.5;
  cpu::router_forward(src.plan, src.logits.data(), c.T, opt);
  src.ein.assign(src.plan.expert_offset[c.E] * c.M, 0.0f);
  cpu::dispatch_forward(src.ein.data(), src.x.data(), src.plan, c.M);
  return src;
}

// mesh.h's placement, restated: E >= D: rank d holds experts [d E/D, (d+1) E/D);
// E < D: R = D/E replicas, rank d holds expert d / R and tokens of rank d go to
// replica d % R of their expert.
int owner_of(int64_t e, int d, int64_t E, int64_t D) {
  if (E >= D) return static_cast<int>(e / (E / D));
  const int64_t R = D / E;
  return static_cast<int>(e * R + d % R);
}

struct RoundTrip {
  ExchangePlan xp;
  std::vector<float> xin, eout, out;      // forward: rows at the experts, back in router order, combined
  std::vector<float> dxout, dein, dx;     // backward: the same in reverse
  int64_t bytes = 0, calls = 0;           // growth of mesh.stats
};

// dispatch -> send -> identity experts -> return -> combine, and the backward.
RoundTrip round_trip(const Case& c, const Source& me, const ExpertPlacement& place, const Mesh& mesh) {
  const int64_t M = c.M, T = c.T, rows = me.plan.expert_offset[c.E];
  RoundTrip r;
  const CommStats before = mesh.stats;
  r.xp = plan_exchange(me.plan, place, mesh);
  send_to_experts(r.xin, me.ein, r.xp, mesh, M);
  return_from_experts(r.eout, r.xin, r.xp, mesh, M);  // expert output = expert input
  r.out.assign(T * M, 0.0f);
  cpu::combine_forward(r.out.data(), r.eout.data(), me.plan, M);
  std::vector<float> deout(rows * M, 0.0f), dweight(T * 2, 0.0f);
  cpu::combine_backward(deout.data(), dweight.data(), me.dout.data(), r.eout.data(), me.plan, M);
  send_to_experts(r.dxout, deout, r.xp, mesh, M);
  return_from_experts(r.dein, r.dxout, r.xp, mesh, M);  // d input = d output
  r.dx.assign(T * M, 0.0f);
  cpu::dispatch_backward(r.dx.data(), r.dein.data(), me.plan, M);
  r.bytes = mesh.stats.alltoall_bytes - before.alltoall_bytes;
  r.calls = mesh.stats.alltoall_calls - before.alltoall_calls;
  return r;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
           return std::memcmp(&x, &y, sizeof(float)) == 0;
         });
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

void run_case(const Case& c) {
  Mesh& mesh = data_mesh();
  const int D = mesh.data_size, me = mesh.data_rank;
  const int64_t E = c.E, M = c.M, T = c.T;
  INFO("case " << c.name << ", E = " << E << ", D = " << D << ", data rank " << me);
  std::vector<Source> src;
  for (int s = 0; s < D; s++) src.push_back(make_source(c, s));
  const Source& mine = src[me];
  if (c.no_drop) CHECK(mine.plan.dropped == 0);
  else CHECK(mine.plan.dropped > 0);
  if (c.kind == Logits::per_rank && E > 2) {  // this rank sends nothing to some experts
    int64_t idle = 0;
    for (int64_t e = 0; e < E; e++) idle += mine.plan.expert_offset[e + 1] == mine.plan.expert_offset[e];
    CHECK(idle == E - 2);
  }

  const ExpertPlacement place = mesh.place_experts(E);  // collective when replicated
  const int64_t R = E >= D ? 1 : D / E, local = E >= D ? E / D : 1;
  CHECK(place.replicas == R);
  CHECK(place.local == local);
  CHECK(place.first == (me / R) * local);
  for (int64_t e = 0; e < E; e++)
    for (int d = 0; d < D; d++) CHECK(place.owner(e, d) == owner_of(e, d, E, D));

  // ---- expected, from the sources' plans alone ----
  std::vector<int64_t> recv_counts(D * local, 0), send_rows(D, 0);
  std::vector<float> xin_expected;
  for (int64_t j = 0; j < local; j++) {
    const int64_t e = place.first + j;
    for (int s = 0; s < D; s++) {
      if (owner_of(e, s, E, D) != me) continue;
      const int64_t b = src[s].plan.expert_offset[e], n = src[s].plan.expert_offset[e + 1] - b;
      recv_counts[s * local + j] = n;
      xin_expected.insert(xin_expected.end(), src[s].ein.begin() + b * M, src[s].ein.begin() + (b + n) * M);
    }
  }
  for (int64_t e = 0; e < E; e++)
    send_rows[owner_of(e, me, E, D)] += mine.plan.expert_offset[e + 1] - mine.plan.expert_offset[e];
  std::vector<int64_t> recv_rows(D, 0);
  for (int s = 0; s < D; s++)
    for (int64_t j = 0; j < local; j++) recv_rows[s] += recv_counts[s * local + j];
  const int64_t others_send = sum(send_rows) - send_rows[me], others_recv = sum(recv_rows) - recv_rows[me];
  std::vector<float> out_expected(T * M, 0.0f), dx_expected(T * M, 0.0f);
  double worst_rel = 0.0;  // out against x
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < M; i++) {
      float o = 0.0f, d = 0.0f;
      for (int k = 0; k < 2; k++) {
        if (mine.plan.row[t * 2 + k] < 0) continue;
        o += mine.plan.weight(t, k) * mine.x[t * M + i];
        d += mine.plan.weight(t, k) * mine.dout[t * M + i];
      }
      out_expected[t * M + i] = o;
      dx_expected[t * M + i] = d;
    }

  // ---- the default path ----
  mesh.count_limit = INT_MAX;
  const RoundTrip r = round_trip(c, mine, place, mesh);
  CHECK(r.xp.send_rows == send_rows);
  CHECK(r.xp.recv_counts == recv_counts);
  CHECK(r.xp.recv_rows == recv_rows);
  CHECK(r.xp.n_recv() == static_cast<int64_t>(xin_expected.size()) / M);
  CHECK(bitwise_equal(r.xin, xin_expected));   // the right rows at the right expert, in order
  CHECK(bitwise_equal(r.eout, mine.ein));      // and back to where they came from
  CHECK(bitwise_equal(r.out, out_expected));
  CHECK(bitwise_equal(r.dx, dx_expected));
  if (c.kind == Logits::one_expert && place.first > 1) CHECK(r.xp.n_recv() == 0);  // experts 2.. get nothing
  if (c.no_drop) {
    for (int64_t i = 0; i < T * M; i++)
      worst_rel = std::max(worst_rel, std::fabs(r.out[i] - mine.x[i]) / std::max(1e-30, std::fabs(double(mine.x[i]))));
    INFO("worst relative |out - x| " << worst_rel << ", tolerance 1e-6");
    CHECK(worst_rel <= 1e-6);
  }
  // 2 sends of dispatched rows (forward values, backward gradients) and 2 returns
  const int64_t bytes_expected = D > 1 ? 2 * (others_send + others_recv) * M * 4 : 0;
  CHECK(r.bytes == bytes_expected);
  CHECK(r.calls == (D > 1 ? 4 : 0));

  // ---- the large-count path: results bitwise those of the default path ----
  // (from the plan the exchange really used: a limit below what one rank moves
  // would make that rank throw while the others wait in the all-to-all)
  const int64_t my_rows = std::max(sum(r.xp.send_rows), sum(r.xp.recv_rows));
  int64_t most_rows = my_rows;  // over every rank and both directions
  MPI_Allreduce(&my_rows, &most_rows, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  std::vector<int64_t> limits = {most_rows,                                          // rows everywhere
                                 std::max(most_rows, M + (most_rows * M - M) / 2),  // rows or floats by rank
                                 most_rows * M};                                    // floats, at the edge
  if (T == 2) CHECK(most_rows <= 5);  // the tiny case exists to test the next line
  if (most_rows <= 5) limits.push_back(5);  // 5 elements: less than one row of M floats
  for (int64_t limit : limits) {
    if (limit < 1) continue;
    INFO("mesh.count_limit = " << limit << " (at most " << most_rows << " rows of " << M << " floats)");
    mesh.count_limit = limit;
    const RoundTrip l = round_trip(c, mine, place, mesh);
    mesh.count_limit = INT_MAX;
    CHECK(bitwise_equal(l.xin, r.xin));
    CHECK(bitwise_equal(l.eout, r.eout));
    CHECK(bitwise_equal(l.out, r.out));
    CHECK(bitwise_equal(l.dxout, r.dxout));
    CHECK(bitwise_equal(l.dein, r.dein));
    CHECK(bitwise_equal(l.dx, r.dx));
    CHECK(l.bytes == r.bytes);
  }

  // ---- a limit below the rows every rank sends: UserError everywhere, no hang ----
  // (no_drop: every rank sends 2T rows, so every rank is over the limit)
  if (D > 1 && c.no_drop) {
    mesh.count_limit = 2 * T - 1;
    bool threw = false;
    std::string what;
    try {
      round_trip(c, mine, place, mesh);
    } catch (const UserError& e) {
      threw = true;
      what = e.what();
    }
    mesh.count_limit = INT_MAX;
    CHECK(threw);
    CHECK_THAT(what, Contains("exceeds the MPI count limit"));
    int all = threw ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    CHECK(all == 1);
  }
}

std::vector<int64_t> placeable_experts(int D) {
  std::vector<int64_t> out;
  for (int64_t E : {2, 3, 4, 6, 8})
    if (E % D == 0 || D % E == 0) out.push_back(E);
  return out;
}

}  // namespace

TEST_CASE("every rank runs one OpenMP and one OpenBLAS thread") {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const char* blas = std::getenv("OPENBLAS_NUM_THREADS");
  CHECK(std::string(omp ? omp : "(unset)") == "1");
  CHECK(std::string(blas ? blas : "(unset)") == "1");
}

TEST_CASE("identity experts through the exchange: random routing, no drops") {
  for (int64_t E : placeable_experts(data_mesh().data_size)) run_case({"random", E, 24, 12, Logits::random, true, 11});
}

TEST_CASE("identity experts through the exchange: random routing with capacity drops") {
  for (int64_t E : placeable_experts(data_mesh().data_size))
    run_case({"random, drops", E, 24, 12, Logits::random, false, 12});
}

TEST_CASE("identity experts through the exchange: every token on the same two experts") {
  for (int64_t E : placeable_experts(data_mesh().data_size)) run_case({"one expert", E, 16, 12, Logits::one_expert, true, 13});
}

TEST_CASE("identity experts through the exchange: rank-dependent experts, some get nothing from some ranks") {
  for (int64_t E : placeable_experts(data_mesh().data_size)) run_case({"per rank", E, 16, 12, Logits::per_rank, true, 14});
}

TEST_CASE("count_limit of 5 elements, less than one row: the row datatype path") {
  const int D = data_mesh().data_size;
  const int64_t E = std::max(2, D);  // E = D (or 2 on one rank): every rank receives 4 rows
  run_case({"tiny, count_limit 5", E, 2, 8, Logits::per_rank, true, 15});
}

// With one data rank the all-to-all makes no MPI call and copies the rows itself:
// through the caller's copy hook when one is given (a GPU backend passes a
// device copy, so device pointers never reach memcpy), else memcpy. With several
// data ranks the rows go through MPI and the hook is never called.
namespace {
int hook_calls = 0;
size_t hook_bytes = 0;
void counting_copy(void* dst, const void* src, size_t bytes) {
  hook_calls++;
  hook_bytes += bytes;
  std::memcpy(dst, src, bytes);
}
}  // namespace

TEST_CASE("alltoallv_rows_data: the copy hook on one data rank, MPI on several") {
  const Mesh& mesh = data_mesh();
  const int D = mesh.data_size;
  const int64_t width = 3;
  // rank r sends r + 1 + s rows to rank s; row values name (source, destination, row, column)
  std::vector<int64_t> send_rows(D), recv_rows(D);
  for (int s = 0; s < D; s++) send_rows[s] = mesh.data_rank + 1 + s;
  for (int r = 0; r < D; r++) recv_rows[r] = r + 1 + mesh.data_rank;
  std::vector<float> send, want;
  for (int s = 0; s < D; s++)
    for (int64_t i = 0; i < send_rows[s] * width; i++) send.push_back(float(1000 * mesh.data_rank + 100 * s) + float(i));
  for (int r = 0; r < D; r++)
    for (int64_t i = 0; i < recv_rows[r] * width; i++) want.push_back(float(1000 * r + 100 * mesh.data_rank) + float(i));
  for (bool with_hook : {true, false}) {
    INFO((with_hook ? "with" : "without") << " a copy hook");
    hook_calls = 0;
    hook_bytes = 0;
    std::vector<float> recv(want.size(), -1.0f);
    mesh.alltoallv_rows_data(send.data(), send_rows, recv.data(), recv_rows, width,
                             with_hook ? counting_copy : nullptr);
    CHECK(bitwise_equal(recv, want));
    CHECK(hook_calls == (with_hook && D == 1 ? 1 : 0));
    CHECK(hook_bytes == (with_hook && D == 1 ? want.size() * sizeof(float) : 0u));
  }
  // nothing to send: the hook is not called either
  if (D == 1) {
    hook_calls = 0;
    mesh.alltoallv_rows_data(send.data(), {0}, nullptr, {0}, width, counting_copy);
    CHECK(hook_calls == 0);
  }
}
