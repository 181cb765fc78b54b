// The model on a D x M mesh computes what the single-rank model computes.
//
// One suite for every mesh: the shape comes from GLAM_TEST_MESH ("2x3"; unset = all
// ranks on the data axis) and CTest runs it on 1x1, 2x1, 1x2, 3x1, 2x2, 4x1, 2x3 and
// 6x1 (tests/mpi/CMakeLists.txt). Every rank also builds the REFERENCE model on
// Mesh::single() and runs it on the full batch, so the reference costs no
// communication; the mesh model gets its data rank's rows of the same batch.
// Compared, with the fp32 tolerances below (rank 0 prints the worst error of each):
//   (a) LossParts: loss, ce, aux, z within kLoss; n_targets, choices, dropped, the
//       per-layer drops and loads exactly (the routing decisions are the same);
//   (b) every gradient after backward, gathered to its global shape with
//       gather_global, and every rank's own shard (replicas included) within kGrad;
//   (c) the gradient norm within kLoss and every parameter within kParam after each
//       of 3 Adafactor steps (warm-up then decay, factored and unfactored moments),
//       and the loss parts once more after the last step;
//   (d) then an inference forward (no_drop, as generate runs it): every rank's block
//       of the logits within kLogits, ce and z within kLoss, the loads exactly.
// The initial weights are compared too, bitwise (init is mesh-independent).
// The test model (E = 6 or 2, 6 heads, d_ff 12, vocab 36) splits over every mesh
// above; E = 2 puts 3 replicas of each expert on 6x1 and 2 on 4x1, E = 6 one expert
// per rank on 6x1 and two or three per rank elsewhere. Where E cannot be placed
// (E = 6 on 4 data ranks, E = 2 on 3) the case is skipped with a warning.
//
// Rules for MPI tests: no REQUIRE once a collective has run (a failing REQUIRE on
// one rank would leave the others waiting), and every rank runs the same sequence
// of collectives whatever the comparisons find.
#include <catch2/catch.hpp>
#include <cblas.h>
#include <mpi.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "glam/model/adafactor.h"
#include "glam/model/model.h"
#include "glam/model/params.h"

using namespace glam;

namespace {

// Tolerance |a - b| <= rel * scale + abs, scale = |ref| for scalars, max|ref| of
// the whole tensor for tensors. The mesh sums partial products over the model axis
// and per-rank partial sums over the data axis in another order than one rank does,
// so results agree to fp32 round-off, amplified a little by 3 layers and 3 steps.
struct Tol {
  double rel, abs;
};
constexpr Tol kLoss{1e-5, 1e-7};   // loss, ce, aux, z, gradient norm
constexpr Tol kGrad{1e-4, 1e-7};   // gradients, per tensor
constexpr Tol kParam{1e-4, 1e-7};  // parameters after the Adafactor steps, per tensor
constexpr Tol kLogits{1e-5, 1e-7}; // logits of the inference forward, per rank's block
constexpr int kSteps = 3;

const Mesh& test_mesh() {
  static const Mesh mesh = [] {
    const char* shape = std::getenv("GLAM_TEST_MESH");
    return Mesh::create(shape ? shape : "");
  }();
  return mesh;
}

std::string mesh_name(const Mesh& m) { return std::to_string(m.data_size) + "x" + std::to_string(m.model_size); }

Config equivalence_config(int64_t n_experts) {
  Config c;
  c.model.vocab_size = 36;      // splits over 1, 2, 3 model ranks
  c.model.d_model = 24;
  c.model.n_layers = 3;         // MoE, GEGLU, MoE
  c.model.n_heads = 6;
  c.model.d_head = 4;
  c.model.d_ff = 12;
  c.model.n_experts = n_experts;
  c.model.group_size = 8;       // divides every rank's tokens (rows_per_rank * 8)
  c.model.capacity_factor = 0.5;  // C = 4 slots per expert and group of 8: drops
  c.model.expert_act = "gelu";
  c.model.seq_len = 8;
  c.model.aux_loss_weight = 0.1;  // larger than GLaM's, so their gradients show
  c.model.z_loss_weight = 0.01;
  c.train.batch_rows = 12;      // splits over 1, 2, 3, 4, 6 data ranks
  c.train.seed = 77;
  c.train.lr = 0.01;
  c.train.warmup_steps = 2;     // steps 1-2 at lr, step 3 decayed
  c.train.factored_min_dim = 12;  // embedding, attention, FFN and experts factored;
                                  // rel_bias, router and norms not
  c.validate();
  return c;
}

// The global batch, the same on every rank: random ids, some targets masked, two
// or three documents per row with boundaries that vary from row to row.
Batch global_batch(const Config& c) {
  Batch b;
  b.rows = c.train.batch_rows;
  b.seq_len = c.model.seq_len;
  std::mt19937_64 rng(2024);
  for (int64_t r = 0; r < b.rows; r++)
    for (int64_t s = 0; s < b.seq_len; s++) {
      b.ids.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
      const bool masked = (r * b.seq_len + s) % 7 == 6;
      b.targets.push_back(masked ? -1 : static_cast<int32_t>(rng() % c.model.vocab_size));
      b.segments.push_back(static_cast<int32_t>((s >= 2 + r % 4) + (s >= 6 + r % 2)));
    }
  return b;
}

Batch rows_of(const Batch& b, int64_t first, int64_t n) {
  Batch out;
  out.rows = n;
  out.seq_len = b.seq_len;
  const auto from = first * b.seq_len, to = (first + n) * b.seq_len;
  out.ids.assign(b.ids.begin() + from, b.ids.begin() + to);
  out.targets.assign(b.targets.begin() + from, b.targets.begin() + to);
  out.segments.assign(b.segments.begin() + from, b.segments.begin() + to);
  return out;
}

// This rank's shard of a global tensor of p (the inverse of gather_global, locally).
std::vector<float> shard_of(const Param& p, const std::vector<float>& global, const Mesh& mesh) {
  const std::vector<int64_t> off = p.shard_offset(mesh);
  const size_t nd = p.shape.size();
  std::vector<int64_t> idx(nd, 0);
  std::vector<float> out(p.size());
  for (int64_t i = 0; i < p.size(); i++) {
    int64_t g = 0;
    for (size_t d = 0; d < nd; d++) g = g * p.global_shape[d] + idx[d] + off[d];
    out[i] = global[g];
    for (int64_t d = static_cast<int64_t>(nd) - 1; d >= 0 && ++idx[d] == p.shape[d]; d--) idx[d] = 0;
  }
  return out;
}

// The worst comparison of one kind (as a fraction of its tolerance), for the report.
struct Worst {
  double err = 0.0, tol = 1.0;
  std::string where;
  void add(double e, double t, const std::string& w) {
    if (e / t > err / tol || where.empty()) { err = e; tol = t; where = w; }
  }
};

void check_scalar(Worst& worst, const std::string& what, double mesh_v, double ref_v, Tol tol) {
  const double err = std::fabs(mesh_v - ref_v), t = tol.rel * std::fabs(ref_v) + tol.abs;
  worst.add(err, t, what);
  INFO(what << ": mesh " << mesh_v << " reference " << ref_v << " |diff| " << err << " tol " << t);
  CHECK(err <= t);
}

void check_tensor(Worst& worst, const std::string& what, const std::vector<float>& mesh_v,
                  const std::vector<float>& ref_v, Tol tol) {
  INFO(what);
  CHECK(mesh_v.size() == ref_v.size());
  if (mesh_v.size() != ref_v.size()) return;
  double scale = 0.0, err = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < ref_v.size(); i++) {
    scale = std::max(scale, std::fabs(static_cast<double>(ref_v[i])));
    const double e = std::fabs(static_cast<double>(mesh_v[i]) - ref_v[i]);
    if (e > err || std::isnan(e)) { err = std::isnan(e) ? INFINITY : e; at = i; }
  }
  const double t = tol.rel * scale + tol.abs;
  worst.add(err, t, what);
  INFO("worst |diff| " << err << " at flat index " << at << " (mesh " << mesh_v[at] << ", reference "
                       << ref_v[at] << "), tol " << t << " = " << tol.rel << " * max|ref| " << scale << " + "
                       << tol.abs);
  CHECK(err <= t);
}

void check_parts(Worst& worst, const std::string& when, const LossParts& m, const LossParts& r) {
  check_scalar(worst, when + " loss", m.loss, r.loss, kLoss);
  check_scalar(worst, when + " ce", m.ce, r.ce, kLoss);
  check_scalar(worst, when + " aux", m.aux, r.aux, kLoss);
  check_scalar(worst, when + " z", m.z, r.z, kLoss);
  INFO(when);
  CHECK(m.n_targets == r.n_targets);
  CHECK(m.choices == r.choices);
  CHECK(m.dropped == r.dropped);
  CHECK(m.layer_dropped == r.layer_dropped);
  CHECK(m.load_before == r.load_before);
  CHECK(m.load_after == r.load_after);
}

// Gathered (global) and local (this rank's shard, replicas included) comparisons
// of one field of every parameter: grads (p.g) or weights (p.w).
void check_params(Worst& gathered, Worst& local, const std::string& when, const ParamTable& mesh_t,
                  const ParamTable& ref_t, const Mesh& mesh, bool grads, Tol tol) {
  for (size_t i = 0; i < ref_t.params.size(); i++) {
    const Param& p = mesh_t.params[i];
    const Param& r = ref_t.params[i];
    const std::vector<float>& pv = grads ? p.g : p.w;
    const std::vector<float>& rv = grads ? r.g : r.w;
    const std::string what = when + " " + (grads ? "grad " : "weight ") + r.name;
    check_tensor(gathered, what + " (gathered)", gather_global(p, pv, mesh), rv, tol);  // collective
    check_tensor(local, what + " (shard of rank " + std::to_string(mesh.world_rank) + ")", pv,
                 shard_of(p, rv, mesh), tol);
  }
}

// Prints, on rank 0, the worst comparison of one kind: over every rank when
// over_ranks (collective), else rank 0's own (the gathered tensors are the same on all).
void report(const Mesh& mesh, const std::string& what, const Worst& w, bool over_ranks) {
  char line[512];
  std::snprintf(line, sizeof line, "%s: |diff| %.3g, tolerance %.3g", w.where.c_str(), w.err, w.tol);
  struct { double ratio; int rank; } mine{w.err / w.tol, mesh.world_rank}, worst = mine;
  if (over_ranks) {
    MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE_INT, MPI_MAXLOC, MPI_COMM_WORLD);
    if (worst.rank != 0) {  // that rank hands its description to rank 0
      if (mesh.world_rank == worst.rank) MPI_Send(line, sizeof line, MPI_CHAR, 0, 7, MPI_COMM_WORLD);
      if (mesh.is_root()) MPI_Recv(line, sizeof line, MPI_CHAR, worst.rank, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
  }
  if (mesh.is_root()) std::printf("  %-24s worst %.3f of tolerance (rank %d) %s\n", what.c_str(), worst.ratio,
                                  over_ranks ? worst.rank : 0, line);
}

// This rank's block of the reference's logits [T, V]: its data rank's rows, its
// model rank's vocabulary columns.
std::vector<float> logits_block(const std::vector<float>& ref, const Config& c, const Mesh& mesh) {
  const int64_t V = c.model.vocab_size, Vl = V / mesh.model_size, v0 = Vl * mesh.model_rank;
  const int64_t T = c.train.batch_rows / mesh.data_size * c.model.seq_len, t0 = T * mesh.data_rank;
  std::vector<float> out;
  for (int64_t t = t0; t < t0 + T; t++)
    out.insert(out.end(), ref.begin() + t * V + v0, ref.begin() + t * V + v0 + Vl);
  return out;
}

// second_policy: the router's policy for second choices.
void run_equivalence(int64_t n_experts, const std::string& second_policy = "all") {
  const Mesh& mesh = test_mesh();
  const int64_t D = mesh.data_size;
  const std::string name = "mesh " + mesh_name(mesh) + ", E = " + std::to_string(n_experts) +
                           (second_policy == "all" ? "" : ", second_policy " + second_policy);
  if (n_experts % D != 0 && D % n_experts != 0) {  // same decision on every rank, no collective yet
    if (mesh.is_root()) WARN(name << ": " << n_experts << " experts cannot be placed on " << D << " data ranks; skipped");
    return;
  }
  Config cfg = equivalence_config(n_experts);
  cfg.model.second_policy = second_policy;
  const Batch full = global_batch(cfg);
  const int64_t rows = cfg.train.batch_rows / D;
  const Batch mine = rows_of(full, mesh.data_rank * rows, rows);

  Mesh single = Mesh::single();
  Model ref(cfg, single);
  Model model(cfg, mesh);  // collective where experts are replicated (replica_comm)
  Adafactor ref_opt(ref.params(), AdafactorOptions::from(cfg.train));
  Adafactor opt(model.params(), AdafactorOptions::from(cfg.train));
  {
    INFO(name);
    CHECK(model.experts().replicas == (n_experts >= D ? 1 : D / n_experts));
    CHECK(model.experts().local == (n_experts >= D ? n_experts / D : 1));
    for (const Param& p : model.params().params)
      if (p.data_axis >= 0) CHECK(p.data_replicas == model.experts().replicas);
  }

  LossParts ref0;  // the reference's step 0, for the report
  Worst parts, grads_g, grads_l, weights_g, weights_l, norms;
  Worst init_g, init_l;  // initial weights: bitwise (tolerance 0 + tiny)
  check_params(init_g, init_l, "init", model.params(), ref.params(), mesh, false, Tol{0.0, 1e-30});

  for (int64_t step = 0; step <= kSteps; step++) {
    const std::string when = "step " + std::to_string(step);
    ref.set_step(step);
    model.set_step(step);
    ref.params().zero_grad();
    model.params().zero_grad();
    const LossParts rp = ref.forward(full);
    const LossParts mp = model.forward(mine);
    {
      INFO(name << " " << when << ": the reference drops some choices for capacity");
      CHECK(rp.dropped > 0);
    }
    check_parts(parts, when, mp, rp);
    if (step == 0) ref0 = rp;
    if (step == kSteps) break;  // the loss after the last update is compared, nothing more
    ref.backward();
    model.backward();
    check_params(grads_g, grads_l, when, model.params(), ref.params(), mesh, true, kGrad);
    const double rn = global_grad_norm(ref.params(), single), mn = global_grad_norm(model.params(), mesh);
    check_scalar(norms, when + " grad norm", mn, rn, kLoss);
    const double lr = learning_rate(cfg.train, step + 1);
    ref_opt.step(ref.params(), lr, step, single);
    opt.step(model.params(), lr, step, mesh);
    check_params(weights_g, weights_l, "after " + when, model.params(), ref.params(), mesh, false, kParam);
  }

  // Inference (no_drop, as generate runs it) with the trained weights: the same
  // logits, ce, z, loss (no aux at inference) and loads.
  Worst logits_w, inference;
  {
    const LossParts rp = ref.forward(full, /*no_drop=*/true);
    const LossParts mp = model.forward(mine, /*no_drop=*/true);
    check_tensor(logits_w, "inference logits (this rank's block)", model.logits(),
                 logits_block(ref.logits(), cfg, mesh), kLogits);
    check_scalar(inference, "inference ce", mp.ce, rp.ce, kLoss);
    check_scalar(inference, "inference z", mp.z, rp.z, kLoss);
    check_scalar(inference, "inference aux", mp.aux, rp.aux, kLoss);
    check_scalar(inference, "inference loss", mp.loss, rp.loss, kLoss);
    INFO(name << ": inference forward");
    CHECK(rp.dropped == 0);
    CHECK(rp.aux == 0.0);
    CHECK(mp.dropped == rp.dropped);
    CHECK(mp.n_targets == rp.n_targets);
    CHECK(mp.load_before == rp.load_before);
    CHECK(mp.load_after == rp.load_after);
  }

  if (mesh.is_root())
    std::printf("%s (%lld experts per rank, %lld replicas), reference drops in step 0: %lld of %lld choices\n",
                name.c_str(), static_cast<long long>(model.experts().local),
                static_cast<long long>(model.experts().replicas), static_cast<long long>(ref0.dropped),
                static_cast<long long>(ref0.choices));
  report(mesh, "initial weights", init_l, true);
  report(mesh, "loss parts", parts, true);
  report(mesh, "grad norm", norms, true);
  report(mesh, "gradients (gathered)", grads_g, false);
  report(mesh, "gradients (every shard)", grads_l, true);
  report(mesh, "weights (gathered)", weights_g, false);
  report(mesh, "weights (every shard)", weights_l, true);
  report(mesh, "inference logits", logits_w, true);
  report(mesh, "inference ce, z", inference, true);
  if (mesh.is_root()) std::fflush(stdout);
}

}  // namespace

TEST_CASE("every rank runs one OpenMP and one OpenBLAS thread, on the mesh asked for") {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const char* blas = std::getenv("OPENBLAS_NUM_THREADS");
  CHECK(std::string(omp ? omp : "(unset)") == "1");
  CHECK(std::string(blas ? blas : "(unset)") == "1");
  CHECK(omp_get_max_threads() == 1);
  CHECK(openblas_get_num_threads() == 1);
  const Mesh& mesh = test_mesh();
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  CHECK(mesh.data_size * mesh.model_size == world);
  const char* shape = std::getenv("GLAM_TEST_MESH");
  if (shape) CHECK(mesh_name(mesh) == shape);
}

TEST_CASE("GLaM with 6 experts on the mesh equals the single-rank model") { run_equivalence(6); }

TEST_CASE("GLaM with 2 experts (replicated where D > 2) on the mesh equals the single-rank model") {
  run_equivalence(2);
}

// GShard's random second-expert policy draws from the global token index, so it
// too is the same on every mesh.
TEST_CASE("random second policy: same answer on every mesh") { run_equivalence(6, "random"); }
