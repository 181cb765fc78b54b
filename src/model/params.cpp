// The parameter table of a GLaM model: names, shapes (global and local shard),
// sharding axes and initialisation, as GLaM's public code initialises them.
#include "glam/model/params.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "glam/base/check.h"
#include "glam/base/hash.h"

namespace glam {

int64_t Param::size() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Param::global_size() const {
  int64_t n = 1;
  for (int64_t d : global_shape) n *= d;
  return n;
}

int64_t Param::row_size() const { return shape.empty() || shape[0] == 0 ? 1 : size() / shape[0]; }

std::vector<int64_t> Param::shard_offset(const Mesh& mesh) const {
  std::vector<int64_t> off(shape.size(), 0);
  if (model_axis >= 0) off[model_axis] = shape[model_axis] * mesh.model_rank;
  if (data_axis >= 0) off[data_axis] = shape[data_axis] * (mesh.data_rank / data_replicas);
  return off;
}

Param& ParamTable::get(const std::string& name) {
  for (auto& p : params) if (p.name == name) return p;
  fatal("no parameter named " + name, __FILE__, __LINE__);
}

const Param& ParamTable::get(const std::string& name) const {
  return const_cast<ParamTable*>(this)->get(name);
}

void ParamTable::zero_grad() {
  for (auto& p : params) std::fill(p.g.begin(), p.g.end(), 0.0f);
}

int64_t ParamTable::local_size() const {
  int64_t n = 0;
  for (const auto& p : params) n += p.size();
  return n;
}

namespace {

// What a sharded dim holds, for error messages.
std::string axis_meaning(const std::string& name, int axis) {
  if (name == "embedding") return "vocabulary rows (model.vocab_size)";
  if (name.find("attn/") != std::string::npos) return "head columns (model.n_heads)";
  (void)axis;
  return "hidden units (model.d_ff)";
}

struct Builder {
  const Mesh& mesh;
  ParamTable table;

  void add(const std::string& name, std::vector<int64_t> shape, Init init, double scale,
           int model_axis = -1, int data_axis = -1) {
    Param p;
    p.name = name;
    p.global_shape = shape;
    p.model_axis = model_axis;
    p.data_axis = data_axis;
    p.init = init;
    p.scale = scale;
    if (model_axis >= 0) {
      GLAM_REQUIRE(shape[model_axis] % mesh.model_size == 0, "mesh ", mesh.data_size, "x", mesh.model_size,
                   ": parameter ", name, " has ", shape[model_axis], " ", axis_meaning(name, model_axis),
                   " which do not split over ", mesh.model_size, " model ranks");
      shape[model_axis] /= mesh.model_size;
    }
    if (data_axis >= 0) {  // experts: split over data, or replicated when fewer than ranks
      const int64_t E = shape[data_axis], D = mesh.data_size;
      GLAM_REQUIRE(E % D == 0 || D % E == 0, "parameter ", name, ": ", E, " experts cannot be placed on ",
                   D, " data ranks (model.n_experts must be a multiple or a divisor of the data axis size)");
      p.data_replicas = E >= D ? 1 : D / E;
      shape[data_axis] = E >= D ? E / D : 1;
    }
    p.shape = shape;
    table.params.push_back(std::move(p));
  }
};

std::string layer_name(int64_t l, const char* what) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "layer_%02lld/%s", static_cast<long long>(l), what);
  return buf;
}

// Each element draws from splitmix64 of (seed, name hash, index) (glam/base/hash.h): a
// counter-based generator, so a shard can draw its elements without drawing anyone else's.
float draw(const Param& p, uint64_t key, int64_t index) {
  if (p.init == Init::ones) return 1.0f;
  uint64_t a = splitmix64(key ^ splitmix64(static_cast<uint64_t>(index)));
  double u1 = open_unit_interval(a);
  if (p.init == Init::uniform) return static_cast<float>((2.0 * u1 - 1.0) * p.scale);
  double u2 = open_unit_interval(splitmix64(a));
  return static_cast<float>(p.scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace

ParamTable build_params(const ModelConfig& c, const Mesh& mesh) {
  ParamTable table = describe_params(c, mesh);
  for (Param& p : table.params) {
    p.w.assign(p.size(), 0.0f);
    p.g.assign(p.size(), 0.0f);
  }
  return table;
}

ParamTable describe_params(const ModelConfig& c, const Mesh& mesh) {
  Builder b{mesh, {}};
  const int64_t M = c.d_model, A = c.n_heads * c.d_head, H = c.d_ff, E = c.n_experts;
  const double u_in = std::sqrt(3.0 / M), u_out = std::sqrt(3.0 / H);
  b.add("embedding", {c.vocab_size, M}, Init::normal, 1.0, 0);
  for (int64_t l = 0; l < c.n_layers; l++) {
    b.add(layer_name(l, "attn/norm_scale"), {M}, Init::ones, 1.0);
    b.add(layer_name(l, "attn/wq"), {M, A}, Init::normal, 1.0 / std::sqrt(double(M) * c.d_head), 1);
    b.add(layer_name(l, "attn/wk"), {M, A}, Init::normal, 1.0 / std::sqrt(double(M)), 1);
    b.add(layer_name(l, "attn/wv"), {M, A}, Init::normal, 1.0 / std::sqrt(double(M)), 1);
    b.add(layer_name(l, "attn/wo"), {A, M}, Init::normal, 1.0 / std::sqrt(double(A)), 0);
    b.add(layer_name(l, "attn/rel_bias"), {c.n_heads, 32}, Init::normal,
          1.0 / std::sqrt(32.0 * c.n_heads), 0);
    b.add(layer_name(l, "ffn/norm_scale"), {M}, Init::ones, 1.0);
    if (c.is_moe_layer(l)) {
      b.add(layer_name(l, "moe/router"), {M, E}, Init::uniform, u_in);
      b.add(layer_name(l, "moe/wi"), {E, M, H}, Init::uniform, u_in, 2, 0);
      b.add(layer_name(l, "moe/wo"), {E, H, M}, Init::uniform, u_out, 1, 0);
    } else {
      b.add(layer_name(l, "ffn/wi0"), {M, H}, Init::uniform, u_in, 1);
      b.add(layer_name(l, "ffn/wi1"), {M, H}, Init::uniform, u_in, 1);
      b.add(layer_name(l, "ffn/wo"), {H, M}, Init::uniform, u_out, 0);
    }
  }
  b.add("final_norm_scale", {M}, Init::ones, 1.0);
  return std::move(b.table);
}

// Every element is a function of (seed, name, global index) alone, so the
// elements of a tensor are drawn in parallel, in chunks of consecutive local
// indices over the OpenMP threads: the same bits for any thread count as the
// serial walk of for_each_element.
void init_params(ParamTable& table, uint64_t seed, const Mesh& mesh) {
  constexpr int64_t kChunk = int64_t{1} << 15;
  for (auto& p : table.params) {
    uint64_t key = splitmix64(seed);
    for (char ch : p.name) key = splitmix64(key ^ static_cast<unsigned char>(ch));
    const std::vector<int64_t> off = p.shard_offset(mesh);
    const int64_t nd = static_cast<int64_t>(p.shape.size()), n = p.size();
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    GLAM_REQUIRE(static_cast<int64_t>(p.w.size()) == n, "init_params: ", p.name, " has no buffer");
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
    for (int64_t c = 0; c < chunks; c++) {
      const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
      std::vector<int64_t> idx(static_cast<size_t>(nd), 0);  // local multi-index of lo, row-major
      for (int64_t d = nd - 1, rest = lo; d >= 0; d--) {
        idx[d] = rest % p.shape[d];
        rest /= p.shape[d];
      }
      for (int64_t i = lo; i < hi; i++) {
        int64_t global = 0;
        for (int64_t d = 0; d < nd; d++) global = global * p.global_shape[d] + idx[d] + off[d];
        p.w[i] = draw(p, key, global);
        for (int64_t d = nd - 1; d >= 0 && ++idx[d] == p.shape[d]; d--) idx[d] = 0;
      }
    }
  }
}

void for_each_element(const Param& p, const Mesh& mesh, const std::function<void(int64_t, int64_t)>& f) {
  const std::vector<int64_t> off = p.shard_offset(mesh);
  const int64_t nd = static_cast<int64_t>(p.shape.size());
  std::vector<int64_t> idx(nd, 0);  // local multi-index, row-major walk
  for (int64_t i = 0; i < p.size(); i++) {
    int64_t global = 0;
    for (int64_t d = 0; d < nd; d++) global = global * p.global_shape[d] + idx[d] + off[d];
    f(i, global);
    for (int64_t d = nd - 1; d >= 0 && ++idx[d] == p.shape[d]; d--) idx[d] = 0;
  }
}

bool is_primary(const Param& p, const Mesh& mesh) {
  return (p.model_axis >= 0 || mesh.model_rank == 0) &&
         (p.data_axis >= 0 ? mesh.data_rank % p.data_replicas == 0 : mesh.data_rank == 0);
}

void zero_rows_of(int64_t rows, int D, int r, int64_t& first, int64_t& count) {
  const int64_t base = rows / D, extra = rows % D;
  count = base + (r < extra ? 1 : 0);
  first = r * base + std::min<int64_t>(r, extra);
}

std::vector<int64_t> zero_counts(const Param& p, int D) {
  std::vector<int64_t> counts(D);
  for (int r = 0; r < D; r++) {
    int64_t first = 0, rows = 0;
    zero_rows_of(p.shape.empty() ? 1 : p.shape[0], D, r, first, rows);
    counts[r] = rows * p.row_size();
  }
  return counts;
}

int64_t shard_state_over_data(ParamTable& table, const Mesh& mesh) {
  int64_t marked = 0;
  if (mesh.data_size == 1) return 0;  // nothing is replicated over data
  for (Param& p : table.params) {
    if (p.data_axis >= 0 || p.shape.size() > 2) continue;
    zero_rows_of(p.shape.empty() ? 1 : p.shape[0], mesh.data_size, mesh.data_rank, p.zero_row0, p.zero_rows);
    if (!p.g.empty()) std::vector<float>(p.zero_rows * p.row_size(), 0.0f).swap(p.g);  // only this rank's rows
    marked++;
  }
  return marked;
}

int64_t shard_weights_over_data(ParamTable& table) {
  int64_t marked = 0;
  for (Param& p : table.params) {
    p.zero_weights = p.zero_sharded();
    marked += p.zero_weights;
  }
  return marked;
}

void keep_weight_rows(Param& p) {
  if (!p.zero_weights || p.w_on_shard) return;
  const int64_t first = p.zero_row0 * p.row_size(), n = p.zero_rows * p.row_size();
  std::vector<float>(p.w.begin() + first, p.w.begin() + first + n).swap(p.w);  // frees the other rows
  p.w_on_shard = true;
}

void gather_weight_rows(Param& p, const Mesh& mesh) {
  if (!p.w_on_shard) return;
  std::vector<float> whole(p.size());  // [shape]
  std::copy(p.w.begin(), p.w.end(), whole.begin() + p.zero_row0 * p.row_size());
  mesh.allgather_data(whole.data(), zero_counts(p, mesh.data_size));
  p.w.swap(whole);
  p.w_on_shard = false;
}

void sum_over_shards(const Param& p, const Mesh& mesh, double* v, int64_t n) {
  if (p.zero_sharded()) mesh.allreduce_sum_data(v, n);  // each data rank summed its rows
  if (p.model_axis >= 0) mesh.allreduce_sum_model(v, n);
  if (p.data_axis >= 0) {
    mesh.allreduce_sum_data(v, n);
    for (int64_t i = 0; i < n; i++) v[i] /= static_cast<double>(p.data_replicas);
  }
}

std::vector<float> gather_global(const Param& p, const std::vector<float>& local, const Mesh& mesh) {
  std::vector<float> global(p.global_size(), 0.0f);
  if (is_primary(p, mesh)) {
    for_each_element(p, mesh, [&](int64_t i, int64_t g) { global[g] = local[i]; });
  }
  mesh.allreduce_sum_world(global.data(), p.global_size());
  return global;
}

namespace {
int64_t attention_params(const ModelConfig& c) {
  return 4 * c.d_model * c.n_heads * c.d_head + c.n_heads * 32 + 2 * c.d_model;
}
}  // namespace

int64_t count_params(const ModelConfig& c) {
  const int64_t M = c.d_model, H = c.d_ff, E = c.n_experts;
  const int64_t n_moe = c.n_moe_layers(), n_dense = c.n_layers - n_moe;
  return c.vocab_size * M + c.n_layers * attention_params(c) + n_dense * 3 * M * H +
         n_moe * (E * 2 * M * H + M * E) + M;
}

int64_t count_activated_params(const ModelConfig& c) {
  const int64_t M = c.d_model, H = c.d_ff, E = c.n_experts;
  const int64_t n_moe = c.n_moe_layers(), n_dense = c.n_layers - n_moe;
  return c.vocab_size * M + c.n_layers * attention_params(c) + n_dense * 3 * M * H +
         n_moe * (2 * 2 * M * H + M * E) + M;
}

}  // namespace glam
