// Adafactor (see adafactor.h). Sums over a tensor that is sharded on the mesh are
// reduced over the axes it is split on, so every rank computes the global RMS.
#include "glam/adafactor.h"

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

double sum_squares(const std::vector<float>& x) { return sum_squares(x.data(), static_cast<int64_t>(x.size())); }

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
  for (size_t i = 0; i < table.params.size(); i++) update(table.params[i], slots_[i], rho, lr, mesh);
}

void Adafactor::update(Param& p, AdafactorSlot& s, double rho, double lr, const Mesh& mesh) {
  const int64_t n = p.size();
  const size_t nd = p.shape.size();
  std::vector<float>& u = u_;  // [n] the update U, before clipping
  u.resize(n);
  if (s.factored) {
    const int64_t R = s.rows, C = s.cols;
    const bool rows_split = p.model_axis == static_cast<int>(nd) - 2;
    const bool cols_split = p.model_axis == static_cast<int>(nd) - 1;
    const double R_global = static_cast<double>(p.global_shape[nd - 2]);
    const double C_global = static_cast<double>(p.global_shape[nd - 1]);
    for (int64_t b = 0; b < s.lead; b++) {
      const float* g = p.g.data() + b * R * C;
      std::vector<double> row(R, 0.0), col(C, 0.0);  // sums of g^2 + eps
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
      if (cols_split) mesh.allreduce_sum_model(row.data(), R);
      if (rows_split) mesh.allreduce_sum_model(col.data(), C);
      float* vr = s.vr.data() + b * R;
      float* vc = s.vc.data() + b * C;
      double vr_sum = 0.0;
      for (int64_t r = 0; r < R; r++) {
        vr[r] = static_cast<float>(rho * vr[r] + (1.0 - rho) * row[r] / C_global);
        vr_sum += vr[r];
      }
      for (int64_t c = 0; c < C; c++) vc[c] = static_cast<float>(rho * vc[c] + (1.0 - rho) * col[c] / R_global);
      if (rows_split) mesh.allreduce_sum_model(&vr_sum, 1);
      const double vr_mean = vr_sum / R_global;
      // U = g / sqrt(vr[r] vc[c] / mean(vr)), as a product of a row and a column factor
      std::vector<float> col_scale(C);
      for (int64_t c = 0; c < C; c++) col_scale[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(vc[c])));
      for (int64_t r = 0; r < R; r++) {
        const float row_scale = static_cast<float>(std::sqrt(vr_mean / vr[r]));
        const float* gr = g + r * C;
        float* ur = u.data() + b * R * C + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) ur[c] = gr[c] * row_scale * col_scale[c];
      }
    }
  } else {
    for (int64_t i = 0; i < n; i++) {
      double g2 = static_cast<double>(p.g[i]) * p.g[i] + opt_.eps;
      s.v[i] = static_cast<float>(rho * s.v[i] + (1.0 - rho) * g2);
      u[i] = static_cast<float>(p.g[i] / std::sqrt(static_cast<double>(s.v[i])));
    }
  }
  double sums[2] = {sum_squares(u.data(), n), sum_squares(p.w)};
  sum_over_shards(p, mesh, sums, 2);
  const double count = static_cast<double>(p.global_size());
  const double rms_u = std::sqrt(sums[0] / count), rms_w = std::sqrt(sums[1] / count);
  const double clip = std::max(1.0, rms_u / opt_.clip_threshold);
  const double step = lr * std::max(opt_.min_param_scale, rms_w) / clip;
  const float fstep = static_cast<float>(step);
  float* w = p.w.data();
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
    double s = sum_squares(p.g);
    sum_over_shards(p, mesh, &s, 1);  // whole tensor, identical on the replicas
    sum += s;
  }
  return std::sqrt(sum);
}

}  // namespace glam
