// Adafactor (the GLaM paper, Du et al. 2022) on small hand-built parameter tables, against
// numbers worked out by hand and against a reference step written here from the
// formulas, in double, independently of src/model/adafactor.cpp:
//   rho_t = 1 - (t+1)^-0.8;  G2 = g^2 + eps
//   full:      v = rho v + (1-rho) G2;                      U = g / sqrt(v)
//   factored:  vr = rho vr + (1-rho) mean_cols(G2), vc = rho vc + (1-rho) mean_rows(G2),
//              vhat[r,c] = vr[r] vc[c] / mean(vr);          U = g / sqrt(vhat)
//              (per leading index for [E, R, C] tensors)
//   U /= max(1, RMS(U) / clip);  W -= lr * max(min_param_scale, RMS(W)) * U
// Also learning_rate (warmup, then inverse square root) and global_grad_norm.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "glam/model/adafactor.h"

using namespace glam;

namespace {

Param make_param(const std::string& name, std::vector<int64_t> shape, std::vector<float> w,
                 std::vector<float> g) {
  Param p;
  p.name = name;
  p.global_shape = shape;
  p.shape = shape;
  p.w = std::move(w);
  p.g = std::move(g);
  REQUIRE(static_cast<int64_t>(p.w.size()) == p.size());
  REQUIRE(p.g.size() == p.w.size());
  return p;
}

double rms(const std::vector<double>& x) {
  double s = 0.0;
  for (double v : x) s += v * v;
  return std::sqrt(s / static_cast<double>(x.size()));
}

// The reference optimizer state of one tensor viewed as [lead, R, C].
struct RefSlot {
  bool factored = false;
  int64_t lead = 1, R = 1, C = 1;
  std::vector<double> v, vr, vc;
  RefSlot(bool f, int64_t l, int64_t r, int64_t c) : factored(f), lead(l), R(r), C(c) {
    if (factored) { vr.assign(l * r, 0.0); vc.assign(l * c, 0.0); }
    else v.assign(l * r * c, 0.0);
  }
};

// One reference step; w is updated in place. Returns RMS(U) before clipping.
double ref_step(RefSlot& s, std::vector<double>& w, const std::vector<float>& g, double lr, int64_t t,
                const AdafactorOptions& o) {
  const double rho = 1.0 - std::pow(static_cast<double>(t + 1), -o.decay_pow);
  const int64_t n = static_cast<int64_t>(w.size());
  std::vector<double> U(n);
  if (!s.factored) {
    for (int64_t i = 0; i < n; i++) {
      const double g2 = double(g[i]) * g[i] + o.eps;
      s.v[i] = rho * s.v[i] + (1.0 - rho) * g2;
      U[i] = g[i] / std::sqrt(s.v[i]);
    }
  } else {
    for (int64_t b = 0; b < s.lead; b++) {
      auto G2 = [&](int64_t r, int64_t c) {
        const double x = g[(b * s.R + r) * s.C + c];
        return x * x + o.eps;
      };
      for (int64_t r = 0; r < s.R; r++) {
        double mean = 0.0;
        for (int64_t c = 0; c < s.C; c++) mean += G2(r, c) / s.C;
        s.vr[b * s.R + r] = rho * s.vr[b * s.R + r] + (1.0 - rho) * mean;
      }
      for (int64_t c = 0; c < s.C; c++) {
        double mean = 0.0;
        for (int64_t r = 0; r < s.R; r++) mean += G2(r, c) / s.R;
        s.vc[b * s.C + c] = rho * s.vc[b * s.C + c] + (1.0 - rho) * mean;
      }
      double vr_mean = 0.0;
      for (int64_t r = 0; r < s.R; r++) vr_mean += s.vr[b * s.R + r] / s.R;
      for (int64_t r = 0; r < s.R; r++)
        for (int64_t c = 0; c < s.C; c++) {
          const int64_t i = (b * s.R + r) * s.C + c;
          U[i] = g[i] / std::sqrt(s.vr[b * s.R + r] * s.vc[b * s.C + c] / vr_mean);
        }
    }
  }
  const double rms_u = rms(U);
  const double scale = std::max(o.min_param_scale, rms(w));
  const double clip = std::max(1.0, rms_u / o.clip_threshold);
  for (int64_t i = 0; i < n; i++) w[i] -= lr * scale * U[i] / clip;
  return rms_u;
}

// Compares float results with reference values: |got - want| <= tol * max(|want|, floor).
void compare(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
             double tol, double floor = 1.0) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); i++) {
    const double err = std::abs(got[i] - want[i]) / std::max(std::abs(want[i]), floor);
    worst = std::max(worst, err);
    INFO(what << "[" << i << "]: got " << got[i] << ", expected " << want[i]);
    CHECK(err <= tol);
  }
  std::printf("  adafactor %-34s worst rel err %.2e (tol %.1e)\n", what.c_str(), worst, tol);
}

std::vector<double> to_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// Relative-to-max(|x|, floor) tolerance used for weights (fp32 storage).
constexpr double kTolW = 2e-6;
// Second-moment statistics are stored in fp32.
constexpr double kTolV = 2e-6;

}  // namespace

TEST_CASE("adafactor: full second moment, first step (rho = 0) and second step (rho = 1 - 2^-0.8)") {
  const Mesh mesh = Mesh::single();
  ParamTable table;
  table.params.push_back(make_param("vec", {6}, {1, -2, 0.5f, 3, 0, -1}, {0.5f, -2, 0.003f, -1e-4f, 0, 2}));
  AdafactorOptions opt;  // defaults: decay 0.8, clip 1, min scale 1e-3, eps 1e-30
  Adafactor ada(table, opt);
  REQUIRE_FALSE(ada.slots()[0].factored);
  const double lr = 0.01;

  // Step t = 0: rho = 0, v = g^2 + eps, U = sign(g) (0 where g = 0), RMS(U) = sqrt(5/6) < 1:
  // no clipping; RMS(W) = sqrt(15.25/6) = 1.5942605391424158, so every nonzero-g weight
  // moves by 0.01 * 1.5942605391424158 against the sign of its gradient.
  ada.step(table, lr, 0, mesh);
  const std::vector<double> v1 = {0.25, 4.0, 9e-6, 1e-8, 1e-30, 4.0};
  compare("full step 1: v = g^2 + eps", ada.slots()[0].v, v1, kTolV, 0.0);
  const std::vector<double> w1 = {0.9840573946085759, -1.9840573946085758, 0.48405739460857583,
                                  3.015942605391424,  0.0,                 -1.0159426053914242};
  compare("full step 1: W (hand values)", table.params[0].w, w1, kTolW);

  // Step t = 1 with new gradients. Element 5 has g = 0, so its v only decays: v = rho * 4.
  table.params[0].g = {1.0f, 1.0f, -0.5f, 2e-4f, 3.0f, 0.0f};
  const double rho = 0.42565082250148256;  // 1 - 2^-0.8
  std::vector<double> w = to_double(table.params[0].w);
  std::vector<double> v(6), U(6);
  for (int i = 0; i < 6; i++) {
    const double g = table.params[0].g[i];
    v[i] = rho * v1[i] + (1 - rho) * (g * g + 1e-30);
    U[i] = g / std::sqrt(v[i]);
  }
  const double rms_u = rms(U);
  REQUIRE(rms_u > 1.0);  // these gradients grew: the update is clipped to RMS 1
  const double step = lr * rms(w) / rms_u;
  for (int i = 0; i < 6; i++) w[i] -= step * U[i];
  ada.step(table, lr, 1, mesh);
  CHECK(ada.slots()[0].v[5] / 4.0 == Approx(rho).epsilon(1e-6));
  compare("full step 2: v", ada.slots()[0].v, v, kTolV, 0.0);
  compare("full step 2: W (clipped, RMS(U)>1)", table.params[0].w, w, kTolW);
  std::printf("  adafactor full step 2: RMS(U) before clipping %.4f\n", rms_u);
}

TEST_CASE("adafactor: which tensors are factored") {
  ParamTable table;
  auto add = [&](const char* name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    table.params.push_back(make_param(name, shape, std::vector<float>(n, 1.0f), std::vector<float>(n, 0.0f)));
  };
  add("m128x130", {128, 130});
  add("m127x130", {127, 130});
  add("m130x128", {130, 128});
  add("v300", {300});
  add("e2x128x128", {2, 128, 128});
  add("m128x3", {128, 3});
  Adafactor ada(table, AdafactorOptions{});  // factored_min_dim 128
  const auto& s = ada.slots();
  CHECK(s[0].factored);
  CHECK(s[0].rows == 128);
  CHECK(s[0].cols == 130);
  CHECK(s[0].vr.size() == 128);
  CHECK(s[0].vc.size() == 130);
  CHECK_FALSE(s[1].factored);
  CHECK(s[1].v.size() == 127 * 130);
  CHECK(s[2].factored);
  CHECK_FALSE(s[3].factored);
  CHECK(s[4].factored);
  CHECK(s[4].lead == 2);
  CHECK(s[4].vr.size() == 2 * 128);
  CHECK_FALSE(s[5].factored);
}

TEST_CASE("adafactor: factored matrix, rank-one gradient gives U = sign(g)") {
  // g[r,c] = a_r b_c: vhat = vr vc / mean(vr) = a_r^2 b_c^2 exactly, so U = sign(g).
  const Mesh mesh = Mesh::single();
  const std::vector<float> a = {1.0f, -2.0f, 0.5f}, b = {3.0f, 1.0f, -1.0f, 0.25f};
  std::vector<float> g(12), w(12);
  for (int r = 0; r < 3; r++)
    for (int c = 0; c < 4; c++) { g[r * 4 + c] = a[r] * b[c]; w[r * 4 + c] = 0.1f * (r * 4 + c) - 0.5f; }
  ParamTable table;
  table.params.push_back(make_param("mat", {3, 4}, w, g));
  AdafactorOptions opt;
  opt.factored_min_dim = 2;
  Adafactor ada(table, opt);
  REQUIRE(ada.slots()[0].factored);
  ada.step(table, 0.01, 0, mesh);
  const double scale = 0.01 * rms(to_double(w));
  std::vector<double> want(12);
  for (int i = 0; i < 12; i++) want[i] = w[i] - scale * (g[i] > 0 ? 1.0 : -1.0);
  compare("factored rank-one: W = W - lr*RMS(W)*sign(g)", table.params[0].w, want, kTolW);
}

TEST_CASE("adafactor: factored 3x4 matrix over two steps matches the reference loop") {
  const Mesh mesh = Mesh::single();
  const std::vector<float> w0 = {0.3f, -0.7f, 1.1f, 0.05f, -0.2f, 0.9f, -1.3f, 0.4f, 0.6f, -0.1f, 0.25f, -0.8f};
  const std::vector<float> g1 = {0.2f, -1.5f, 0.01f, 0.7f, -0.3f, 0.05f, 2.0f, -0.4f, 0.9f, 0.0f, -0.6f, 0.1f};
  const std::vector<float> g2 = {-0.1f, 0.3f, 0.8f, -0.02f, 1.2f, -0.5f, 0.3f, 0.0f, -0.7f, 0.4f, 0.2f, 1.0f};
  ParamTable table;
  table.params.push_back(make_param("mat", {3, 4}, w0, g1));
  AdafactorOptions opt;
  opt.factored_min_dim = 2;
  Adafactor ada(table, opt);
  RefSlot ref(true, 1, 3, 4);
  std::vector<double> w = to_double(w0);

  double rms_u = ref_step(ref, w, g1, 0.01, 0, opt);
  ada.step(table, 0.01, 0, mesh);
  compare("factored step 1: vr", ada.slots()[0].vr, ref.vr, kTolV, 0.0);
  compare("factored step 1: vc", ada.slots()[0].vc, ref.vc, kTolV, 0.0);
  compare("factored step 1: W", table.params[0].w, w, kTolW);
  std::printf("  adafactor factored step 1: RMS(U) before clipping %.4f\n", rms_u);

  // Hand check of the first statistics: rho = 0, so vr = row means and vc = column means of g^2.
  CHECK(ada.slots()[0].vr[0] == Approx((0.04 + 2.25 + 1e-4 + 0.49) / 4).epsilon(1e-6));
  CHECK(ada.slots()[0].vc[1] == Approx((2.25 + 0.0025 + 0.0) / 3).epsilon(1e-6));

  table.params[0].g = g2;
  rms_u = ref_step(ref, w, g2, 0.02, 1, opt);
  ada.step(table, 0.02, 1, mesh);
  compare("factored step 2: vr", ada.slots()[0].vr, ref.vr, kTolV, 0.0);
  compare("factored step 2: vc", ada.slots()[0].vc, ref.vc, kTolV, 0.0);
  compare("factored step 2: W", table.params[0].w, w, kTolW);
  std::printf("  adafactor factored step 2: RMS(U) before clipping %.4f\n", rms_u);
}

TEST_CASE("adafactor: [E, R, C] tensor is factored per leading index, RMS over the whole tensor") {
  const Mesh mesh = Mesh::single();
  const int64_t E = 2, R = 3, C = 4, n = E * R * C;
  std::vector<float> w(n), g(n);
  for (int64_t i = 0; i < n; i++) {
    w[i] = 0.05f * static_cast<float>((i * 7) % 11) - 0.25f;
    // Expert 1's gradients are 100x expert 0's: pooled statistics would mix them.
    g[i] = (i < R * C ? 0.01f : 1.0f) * (static_cast<float>((i * 5) % 9) - 4.0f + 0.5f);
  }
  ParamTable table;
  table.params.push_back(make_param("experts/wi", {E, R, C}, w, g));
  AdafactorOptions opt;
  opt.factored_min_dim = 3;
  Adafactor ada(table, opt);
  const AdafactorSlot& s = ada.slots()[0];
  REQUIRE(s.factored);
  REQUIRE(s.lead == E);
  REQUIRE(s.rows == R);
  REQUIRE(s.cols == C);
  RefSlot ref(true, E, R, C);
  std::vector<double> wref = to_double(w);
  for (int64_t t = 0; t < 3; t++) {
    ref_step(ref, wref, table.params[0].g, 0.01, t, opt);
    ada.step(table, 0.01, t, mesh);
    // next gradients: rotate the values so the statistics change between steps
    std::rotate(table.params[0].g.begin(), table.params[0].g.begin() + 1, table.params[0].g.end());
  }
  compare("[E,R,C] after 3 steps: vr", ada.slots()[0].vr, ref.vr, 1e-5, 0.0);
  compare("[E,R,C] after 3 steps: vc", ada.slots()[0].vc, ref.vc, 1e-5, 0.0);
  compare("[E,R,C] after 3 steps: W", table.params[0].w, wref, 1e-5);
}

TEST_CASE("adafactor: update clipping engages for RMS(U) > 1, and min_param_scale for zero weights") {
  const Mesh mesh = Mesh::single();
  SECTION("factored: one dominant entry makes RMS(U) > 1; the step then has RMS lr*RMS(W)") {
    // vhat[r,c] = vr[r] vc[c] / mean(vr) is tiny for the small entries off the
    // dominant row and column, so their U is large.
    std::vector<float> g(16, 0.01f), w(16);
    g[0] = 10.0f;
    for (int i = 0; i < 16; i++) w[i] = 1.0f + 0.1f * i;
    ParamTable table;
    table.params.push_back(make_param("mat", {4, 4}, w, g));
    AdafactorOptions opt;
    opt.factored_min_dim = 2;
    Adafactor ada(table, opt);
    RefSlot ref(true, 1, 4, 4);
    std::vector<double> wref = to_double(w);
    const double rms_u = ref_step(ref, wref, g, 0.01, 0, opt);
    std::printf("  adafactor clipping (factored): RMS(U) before clipping %.3f\n", rms_u);
    REQUIRE(rms_u > 2.0);
    ada.step(table, 0.01, 0, mesh);
    compare("clipped factored W", table.params[0].w, wref, kTolW);
    std::vector<double> delta(16);
    for (int i = 0; i < 16; i++) delta[i] = double(w[i]) - table.params[0].w[i];
    const double expect = 0.01 * rms(to_double(w));  // RMS(W) * lr * RMS(U / RMS(U))
    INFO("RMS of the step " << rms(delta) << ", expected " << expect);
    CHECK(rms(delta) == Approx(expect).epsilon(1e-4));
  }
  SECTION("clip_threshold 0.5 caps RMS(U) at 0.5") {
    ParamTable table;
    table.params.push_back(make_param("vec", {4}, {1, 2, 3, 4}, {1, -1, 1, -1}));
    AdafactorOptions opt;
    opt.clip_threshold = 0.5;
    Adafactor ada(table, opt);
    ada.step(table, 0.1, 0, mesh);  // U = sign(g), RMS 1 -> scaled to 0.5
    const double step = 0.1 * std::sqrt(30.0 / 4.0) * 0.5;
    compare("clip_threshold 0.5 W", table.params[0].w, {1 - step, 2 + step, 3 - step, 4 + step}, kTolW);
  }
  SECTION("zero and tiny weights step by lr * min_param_scale") {
    ParamTable table;
    table.params.push_back(make_param("zeros", {4}, {0, 0, 0, 0}, {0.3f, -2.0f, 5.0f, -1e-3f}));
    table.params.push_back(make_param("tiny", {2}, {1e-6f, -1e-6f}, {1.0f, 1.0f}));
    Adafactor ada(table, AdafactorOptions{});
    ada.step(table, 0.01, 0, mesh);
    const double s = 0.01 * 1e-3;  // lr * min_param_scale, U = sign(g)
    compare("zero W steps by lr*1e-3", table.params[0].w, {-s, s, -s, s}, 1e-5, 0.0);
    const double tiny = 1e-6f;  // RMS(W) = 1e-6 < min_param_scale
    compare("tiny W steps by lr*1e-3", table.params[1].w, {tiny - s, -tiny - s}, 1e-5, 0.0);
  }
}

TEST_CASE("learning_rate: constant through warmup, then lr * sqrt(warmup / t)") {
  TrainConfig tc;
  tc.lr = 0.01;
  tc.warmup_steps = 100;
  const std::vector<std::pair<int64_t, double>> want = {
      {1, 0.01}, {50, 0.01}, {100, 0.01}, {400, 0.005}, {10000, 0.001}, {2500, 0.002}};
  for (const auto& [t, lr] : want) {
    INFO("step " << t);
    CHECK(learning_rate(tc, t) == Approx(lr).epsilon(1e-12));
  }
  tc.warmup_steps = 10000;  // GLaM's schedule
  CHECK(learning_rate(tc, 10000) == Approx(0.01).epsilon(1e-12));
  CHECK(learning_rate(tc, 40000) == Approx(0.005).epsilon(1e-12));
  CHECK(learning_rate(tc, 40001) < 0.005);
}

TEST_CASE("global_grad_norm over a table") {
  ParamTable table;
  table.params.push_back(make_param("a", {2}, {0, 0}, {3, 4}));
  table.params.push_back(make_param("b", {1}, {0}, {-12}));
  table.params.push_back(make_param("c", {2, 2}, {0, 0, 0, 0}, {1, -1, 1, -1}));
  const double norm = global_grad_norm(table, Mesh::single());
  std::printf("  global_grad_norm %.10f, expected sqrt(173) = %.10f (tol 1e-12 rel)\n", norm, std::sqrt(173.0));
  CHECK(norm == Approx(std::sqrt(173.0)).epsilon(1e-12));
}
