// Adafactor's update and the global gradient norm on the GPU, as glam::Adafactor
// (src/adafactor.cpp): the same statistics in double, the same reductions over
// the mesh. Large sums run on the device (fixed grids, partial sums added on the
// host in order: deterministic); the per-row and per-column second moments
// (lead * (R + C) values) are updated on the host exactly as the CPU does.
#include <cmath>
#include <vector>

#include "glam/cuda/adafactor.h"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kBlocks = 256, kThreads = 256;

__global__ void sum_squares_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double red[kThreads];
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += static_cast<double>(x[i]) * x[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

// row[b, r] = sum_c (g^2 + eps), col[b, c] = sum_r (g^2 + eps); one thread per row /
// column (grid-stride), summing in order.
__global__ void adafactor_row_sums_kernel(double* row, const float* g, int64_t lead, int64_t R, int64_t C,
                                          double eps) {
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < lead * R; x += int64_t(gridDim.x) * blockDim.x) {
    const float* gr = g + x * C;
    double s = 0.0;
    for (int64_t c = 0; c < C; c++) s += static_cast<double>(gr[c]) * gr[c] + eps;
    row[x] = s;
  }
}

__global__ void adafactor_col_sums_kernel(double* col, const float* g, int64_t lead, int64_t R, int64_t C,
                                          double eps) {
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < lead * C; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = x / C, c = x % C;
    const float* gb = g + b * R * C;
    double s = 0.0;
    for (int64_t r = 0; r < R; r++) s += static_cast<double>(gb[r * C + c]) * gb[r * C + c] + eps;
    col[x] = s;
  }
}

// u = g / sqrt(vr[r] * vc[c] / vr_mean[b])
__global__ void adafactor_factored_u_kernel(float* u, const float* g, const float* vr, const float* vc,
                                  const double* vr_mean, int64_t lead, int64_t R, int64_t C) {
  const int64_t n = lead * R * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / (R * C), r = (i / C) % R, c = i % C;
    const double v = static_cast<double>(vr[b * R + r]) * vc[b * C + c] / vr_mean[b];
    u[i] = static_cast<float>(g[i] / sqrt(v));
  }
}

// v = rho v + (1 - rho)(g^2 + eps); u = g / sqrt(v)
__global__ void adafactor_full_u_kernel(float* u, float* v, const float* g, int64_t n, double rho, double eps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double g2 = static_cast<double>(g[i]) * g[i] + eps;
    v[i] = static_cast<float>(rho * v[i] + (1.0 - rho) * g2);
    u[i] = static_cast<float>(g[i] / sqrt(static_cast<double>(v[i])));
  }
}

__global__ void adafactor_apply_kernel(float* w, const float* u, int64_t n, double step) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    w[i] -= static_cast<float>(step * u[i]);
}

int grid(int64_t n) { return std::min(grid_for(n, kThreads), kBlocks); }

}  // namespace

// A fixed grid for n (at least 16 elements per thread, at most kBlocks blocks), so
// the partial sums and their order depend on n only.
double sum_squares(const Context& ctx, const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int blocks = std::min(grid_for(n, kThreads * 16), kBlocks);
  double* partial = static_cast<double*>(ctx.scratch(kScratchSquares, blocks * sizeof(double)));
  launch(sum_squares_kernel, blocks, kThreads, 0, ctx.stream(), "sum_squares_kernel", partial, x, n);
  std::vector<double> host(blocks);
  check(cudaMemcpyAsync(host.data(), partial, blocks * sizeof(double), cudaMemcpyDeviceToHost, ctx.stream()),
        "sum_squares");
  ctx.sync();
  double s = 0.0;
  for (double v : host) s += v;
  return s;
}

DeviceAdafactorSlot make_slot(const AdafactorSlot& host) {
  DeviceAdafactorSlot s;
  s.factored = host.factored;
  s.lead = host.lead; s.rows = host.rows; s.cols = host.cols;
  s.v.upload(host.v);
  s.vr = host.vr;
  s.vc = host.vc;
  return s;
}

void adafactor_update(const Context& ctx, float* w, const float* g, DeviceAdafactorSlot& s, const Param& p,
                      double rho, double lr, const AdafactorOptions& opt, const Mesh& mesh) {
  const int64_t n = p.size();
  const size_t nd = p.shape.size();
  Buffer<float> u(n);
  if (s.factored) {
    const int64_t R = s.rows, C = s.cols, L = s.lead;
    const bool rows_split = p.model_axis == static_cast<int>(nd) - 2;
    const bool cols_split = p.model_axis == static_cast<int>(nd) - 1;
    const double R_global = static_cast<double>(p.global_shape[nd - 2]);
    const double C_global = static_cast<double>(p.global_shape[nd - 1]);
    Buffer<double> row(L * R), col(L * C);
    launch(adafactor_row_sums_kernel, grid_for(L * R, 128), 128, 0, ctx.stream(), "adafactor_row_sums_kernel",
           row.data(), g, L, R, C, opt.eps);
    launch(adafactor_col_sums_kernel, grid_for(L * C, 128), 128, 0, ctx.stream(), "adafactor_col_sums_kernel",
           col.data(), g, L, R, C, opt.eps);
    ctx.sync();
    std::vector<double> rows = row.download(), cols = col.download(), vr_mean(L);
    for (int64_t b = 0; b < L; b++) {  // the CPU's statistics, per leading index
      if (cols_split) mesh.allreduce_sum_model(rows.data() + b * R, R);
      if (rows_split) mesh.allreduce_sum_model(cols.data() + b * C, C);
      float* vr = s.vr.data() + b * R;
      float* vc = s.vc.data() + b * C;
      double vr_sum = 0.0;
      for (int64_t r = 0; r < R; r++) {
        vr[r] = static_cast<float>(rho * vr[r] + (1.0 - rho) * rows[b * R + r] / C_global);
        vr_sum += vr[r];
      }
      for (int64_t c = 0; c < C; c++) vc[c] = static_cast<float>(rho * vc[c] + (1.0 - rho) * cols[b * C + c] / R_global);
      if (rows_split) mesh.allreduce_sum_model(&vr_sum, 1);
      vr_mean[b] = vr_sum / R_global;
    }
    Buffer<float> vr_dev, vc_dev;
    Buffer<double> mean_dev;
    vr_dev.upload(s.vr);
    vc_dev.upload(s.vc);
    mean_dev.upload(vr_mean);
    launch(adafactor_factored_u_kernel, grid(n), kThreads, 0, ctx.stream(), "adafactor_factored_u_kernel", u.data(), g,
           vr_dev.data(), vc_dev.data(), mean_dev.data(), L, R, C);
  } else {
    launch(adafactor_full_u_kernel, grid(n), kThreads, 0, ctx.stream(), "adafactor_full_u_kernel", u.data(), s.v.data(), g, n,
           1.0 * rho, opt.eps);
  }
  double sums[2] = {sum_squares(ctx, u.data(), n), sum_squares(ctx, w, n)};
  sum_over_shards(p, mesh, sums, 2);
  const double count = static_cast<double>(p.global_size());
  const double rms_u = std::sqrt(sums[0] / count), rms_w = std::sqrt(sums[1] / count);
  const double clip = std::max(1.0, rms_u / opt.clip_threshold);
  const double step = lr * std::max(opt.min_param_scale, rms_w) / clip;
  launch(adafactor_apply_kernel, grid(n), kThreads, 0, ctx.stream(), "adafactor_apply_kernel", w, u.data(), n, step);
  ctx.sync();
}

}  // namespace glam::cuda
