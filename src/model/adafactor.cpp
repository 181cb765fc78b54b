// Adafactor (see adafactor.h). Sums over a tensor that is sharded on the mesh are
// reduced over the axes it is split on, so every rank computes the global RMS.
#include "glam/model/adafactor.h"

#include <algorithm>
#include <cmath>

namespace glam {

AdafactorOptions AdafactorOptions::from(const TrainConfig& t) {
  AdafactorOptions o;
  o.decay_pow = t.decay_pow;
  o.clip_threshold = t.clip_threshold;
  o.min_param_scale = t.min_param_scale;
  o.factored_min_dim = t.factored_min_dim;
  return o;
}

namespace {

double sum_squares(const float* x, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += static_cast<double>(x[i]) * x[i];
  return s;
}


}  // namespace

Adafactor::Adafactor(const ParamTable& table, const AdafactorOptions& opt) : opt_(opt) {
  for (const Param& p : table.params) {
    AdafactorSlot s;
    const size_t nd = p.shape.size();
    s.factored = adafactor_factored(p, opt);
    if (s.factored) {
      s.rows = p.shape[nd - 2];
      s.cols = p.shape[nd - 1];
      s.lead = p.size() / (s.rows * s.cols);
      s.vr.assign(s.lead * s.rows, 0.0f);
      s.vc.assign(s.lead * s.cols, 0.0f);
    } else {
      s.v.assign(p.size(), 0.0f);
    }
    slots_.push_back(std::move(s));
  }
}

void Adafactor::step(ParamTable& table, double lr, int64_t t, const Mesh& mesh) {
  const double rho = 1.0 - std::pow(static_cast<double>(t + 1), -opt_.decay_pow);
  for (size_t i = 0; i < table.params.size(); i++) {
    Param& p = table.params[i];
    if (p.zero_sharded() && !slots_[i].on_shard) keep_shard_rows(p, slots_[i]);
    update(p, slots_[i], rho, lr, mesh);
    if (p.zero_weights) keep_weight_rows(p);  // train.shard_weights: the layers gather them when used
    else if (p.zero_sharded()) mesh.allgather_data(p.w.data(), zero_counts(p, mesh.data_size));
  }
}

// train.shard_state: the statistics of rows this data rank does not update are
// dropped (they are its peers'); gather_state puts them back for a checkpoint.
void Adafactor::keep_shard_rows(const Param& p, AdafactorSlot& s) {
  const int64_t r0 = p.zero_row0, nr = p.zero_rows;
  if (s.factored) {
    s.vr = std::vector<float>(s.vr.begin() + r0, s.vr.begin() + r0 + nr);
  } else {
    const int64_t w = p.row_size();
    s.v = std::vector<float>(s.v.begin() + r0 * w, s.v.begin() + (r0 + nr) * w);
  }
  s.on_shard = true;
}

void Adafactor::gather_state(const ParamTable& table, const Mesh& mesh) {
  for (size_t i = 0; i < table.params.size(); i++) {
    const Param& p = table.params[i];
    AdafactorSlot& s = slots_[i];
    if (!s.on_shard) continue;
    const int64_t rows = p.shape.empty() ? 1 : p.shape[0];
    std::vector<int64_t> counts = zero_counts(p, mesh.data_size);
    std::vector<float>& part = s.factored ? s.vr : s.v;
    if (s.factored)
      for (int r = 0; r < mesh.data_size; r++) counts[r] /= p.row_size();  // one statistic per row
    std::vector<float> full(s.factored ? rows : p.size(), 0.0f);
    const int64_t offset = s.factored ? p.zero_row0 : p.zero_row0 * p.row_size();
    std::copy(part.begin(), part.end(), full.begin() + offset);
    mesh.allgather_data(full.data(), counts);
    part = std::move(full);
    s.on_shard = false;
  }
}

// Row and column sums of g^2 + eps over g [R, C]; row [R], col [C] overwritten.
void Adafactor::square_sums(const float* g, int64_t R, int64_t C, std::vector<double>& row,
                            std::vector<double>& col) const {
  row.assign(R, 0.0);
  col.assign(C, 0.0);
  for (int64_t r = 0; r < R; r++) {
    const float* gr = g + r * C;
    double* cl = col.data();
    double rs = 0.0;
#pragma omp simd reduction(+ : rs)
    for (int64_t c = 0; c < C; c++) {
      const double g2 = static_cast<double>(gr[c]) * gr[c] + opt_.eps;
      rs += g2;
      cl[c] += g2;
    }
    row[r] = rs;
  }
}

// u [R, C] = g / sqrt(vr[r] vc[c] / mean(vr)) of one [R, C] block of p (its rows
// [row0, row0 + R) when the state is sharded over data), updating vr [R], vc [C].
void Adafactor::factored_update(const Param& p, const float* g, float* u, float* vr, float* vc, int64_t R,
                                int64_t C, double rho, const Mesh& mesh) const {
  const size_t nd = p.shape.size();
  const bool rows_split = p.model_axis == static_cast<int>(nd) - 2;
  const bool cols_split = p.model_axis == static_cast<int>(nd) - 1;
  const double R_global = static_cast<double>(p.global_shape[nd - 2]);
  const double C_global = static_cast<double>(p.global_shape[nd - 1]);
  std::vector<double> row, col;  // sums of g^2 + eps
  square_sums(g, R, C, row, col);
  if (cols_split) mesh.allreduce_sum_model(row.data(), R);
  if (p.zero_sharded()) mesh.allreduce_sum_data(col.data(), C);  // every data rank's rows
  if (rows_split) mesh.allreduce_sum_model(col.data(), C);
  double vr_sum = 0.0;
  for (int64_t r = 0; r < R; r++) {
    vr[r] = static_cast<float>(rho * vr[r] + (1.0 - rho) * row[r] / C_global);
    vr_sum += vr[r];
  }
  for (int64_t c = 0; c < C; c++) vc[c] = static_cast<float>(rho * vc[c] + (1.0 - rho) * col[c] / R_global);
  if (p.zero_sharded()) mesh.allreduce_sum_data(&vr_sum, 1);
  if (rows_split) mesh.allreduce_sum_model(&vr_sum, 1);
  const double vr_mean = vr_sum / R_global;
  // U = g / sqrt(vr[r] vc[c] / mean(vr)), as a product of a row and a column factor
  std::vector<float> col_scale(C);
  for (int64_t c = 0; c < C; c++) col_scale[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(vc[c])));
  for (int64_t r = 0; r < R; r++) {
    const float row_scale = static_cast<float>(std::sqrt(vr_mean / vr[r]));
    const float* gr = g + r * C;
    float* ur = u + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; c++) ur[c] = gr[c] * row_scale * col_scale[c];
  }
}

void Adafactor::update(Param& p, AdafactorSlot& s, double rho, double lr, const Mesh& mesh) {
  // the elements this rank updates: its shard, or its rows of it (train.shard_state)
  const int64_t first = p.zero_sharded() ? p.zero_row0 * p.row_size() : 0;
  const int64_t n = p.zero_sharded() ? p.zero_rows * p.row_size() : p.size();
  const float* g = p.g.data();  // sharded: g holds only this rank's rows
  float* w = p.w.data() + (p.w_on_shard ? 0 : first);  // train.shard_weights: w holds those rows only
  std::vector<float>& u = u_;  // [n] the update U, before clipping
  u.resize(n);
  if (s.factored) {
    const int64_t R = p.zero_sharded() ? p.zero_rows : s.rows, C = s.cols;
    for (int64_t b = 0; b < s.lead; b++)
      factored_update(p, g + b * R * C, u.data() + b * R * C, s.vr.data() + b * R, s.vc.data() + b * C, R, C, rho,
                      mesh);
  } else {
    for (int64_t i = 0; i < n; i++) {
      double g2 = static_cast<double>(g[i]) * g[i] + opt_.eps;
      s.v[i] = static_cast<float>(rho * s.v[i] + (1.0 - rho) * g2);
      u[i] = static_cast<float>(g[i] / std::sqrt(static_cast<double>(s.v[i])));
    }
  }
  double sums[2] = {sum_squares(u.data(), n), sum_squares(w, n)};
  sum_over_shards(p, mesh, sums, 2);
  const double count = static_cast<double>(p.global_size());
  const double rms_u = std::sqrt(sums[0] / count), rms_w = std::sqrt(sums[1] / count);
  const double clip = std::max(1.0, rms_u / opt_.clip_threshold);
  const double step = lr * std::max(opt_.min_param_scale, rms_w) / clip;
  const float fstep = static_cast<float>(step);
#pragma omp simd
  for (int64_t i = 0; i < n; i++) w[i] -= fstep * u[i];
}

bool adafactor_factored(const Param& p, const AdafactorOptions& opt) {
  const size_t nd = p.global_shape.size();
  return nd >= 2 && p.global_shape[nd - 1] >= opt.factored_min_dim && p.global_shape[nd - 2] >= opt.factored_min_dim;
}

int64_t adafactor_state_size(const Param& p, const AdafactorOptions& opt) {
  if (!adafactor_factored(p, opt)) return p.size();
  const size_t nd = p.shape.size();
  const int64_t rows = p.shape[nd - 2], cols = p.shape[nd - 1];
  return p.size() / (rows * cols) * (rows + cols);
}

double learning_rate(const TrainConfig& t, int64_t step) {
  const double warmup = static_cast<double>(std::max<int64_t>(t.warmup_steps, 1));
  return t.lr * std::sqrt(warmup / std::max(warmup, static_cast<double>(step)));
}

double global_grad_norm(const ParamTable& table, const Mesh& mesh) {
  double sum = 0.0;
  for (const Param& p : table.params) {
    double s = sum_squares(p.g.data(), static_cast<int64_t>(p.g.size()));  // sharded: this rank's rows
    sum_over_shards(p, mesh, &s, 1);  // whole tensor, identical on the replicas
    sum += s;
  }
  return std::sqrt(sum);
}

}  // namespace glam
