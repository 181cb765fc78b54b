// Adafactor and the gradient norm on the GPU (optimizer.h). Per parameter:
//   statistics: factored: row/col sums of g^2 + eps (double, one thread per row or
//               column, in order), vr/vc updated, vr's mean; full: v updated;
//   sums:       sum U^2 and sum W^2 in double over a fixed grid, partials added in
//               order by one thread (deterministic), into sums[i];
// then every parameter's step lr * max(min_scale, RMS(W)) / max(1, RMS(U)/clip) is
// computed on the device (1x1 mesh) or after the sums crossed the mesh, and
//   apply:      U recomputed exactly as for the sums, W -= step * U.
#include <cmath>

#include "glam/base/check.h"
#include "glam/layers/cuda/optimizer.h"
#include "launch.cuh"

namespace glam::cuda {

namespace {

constexpr int kBlocks = 128, kThreads = 256;

int grid(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < kBlocks ? (b > 0 ? b : 1) : kBlocks);
}

__global__ void adafactor_step_rows_kernel(double* row, const float* g, int64_t lead, int64_t R, int64_t C,
                                           double eps) {
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < lead * R; x += int64_t(gridDim.x) * blockDim.x) {
    const float* gr = g + x * C;
    double s = 0.0;
    for (int64_t c = 0; c < C; c++) s += static_cast<double>(gr[c]) * gr[c] + eps;
    row[x] = s;
  }
}

__global__ void adafactor_step_cols_kernel(double* col, const float* g, int64_t lead, int64_t R, int64_t C,
                                           double eps) {
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < lead * C; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = x / C, c = x % C;
    const float* gb = g + b * R * C;
    double s = 0.0;
    for (int64_t r = 0; r < R; r++) s += static_cast<double>(gb[r * C + c]) * gb[r * C + c] + eps;
    col[x] = s;
  }
}

// One thread per leading index: vr = rho vr + (1 - rho) row / C_global, and their sum.
__global__ void adafactor_step_vr_kernel(float* vr, double* vr_sum, const double* row, int64_t lead, int64_t R,
                                         double rho, double C_global) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < lead; b += int64_t(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t r = 0; r < R; r++) {
      float& v = vr[b * R + r];
      v = static_cast<float>(rho * v + (1.0 - rho) * row[b * R + r] / C_global);
      s += v;
    }
    vr_sum[b] = s;
  }
}

__global__ void adafactor_step_vc_kernel(float* vc, const double* col, int64_t n, double rho, double R_global) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    vc[i] = static_cast<float>(rho * vc[i] + (1.0 - rho) * col[i] / R_global);
}

__global__ void adafactor_step_v_kernel(float* v, const float* g, int64_t n, double rho, double eps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double g2 = static_cast<double>(g[i]) * g[i] + eps;
    v[i] = static_cast<float>(rho * v[i] + (1.0 - rho) * g2);
  }
}

// U at i, as src/model/adafactor.cpp: factored g * sqrt(mean(vr) / vr[r]) * 1/sqrt(vc[c]), else g / sqrt(v).
__device__ float adafactor_u(int64_t i, const float* g, const float* v, const float* vr, const float* vc,
                             const double* vr_sum, int64_t R, int64_t C, double R_global) {
  if (!vr) return static_cast<float>(g[i] / sqrt(static_cast<double>(v[i])));
  const int64_t b = i / (R * C), r = (i / C) % R, c = i % C;
  const float row_scale = static_cast<float>(sqrt(vr_sum[b] / R_global / vr[b * R + r]));
  const float col_scale = static_cast<float>(1.0 / sqrt(static_cast<double>(vc[b * C + c])));
  return g[i] * row_scale * col_scale;
}

// apply == false: partial[block] = (sum U^2, sum W^2); true: w -= step[0] * U.
__global__ void adafactor_step_update_kernel(double* partial, float* w, const float* g, const float* v, const float* vr,
                                             const float* vc, const double* vr_sum, int64_t n, int64_t R, int64_t C,
                                             double R_global, bool apply, const float* step) {
  __shared__ double red_u[kThreads], red_w[kThreads];
  double su = 0.0, sw = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float u = adafactor_u(i, g, v, vr, vc, vr_sum, R, C, R_global);
    if (apply) {
      w[i] -= step[0] * u;
    } else {
      su += static_cast<double>(u) * u;
      sw += static_cast<double>(w[i]) * w[i];
    }
  }
  if (apply) return;
  red_u[threadIdx.x] = su;
  red_w[threadIdx.x] = sw;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) {
      red_u[threadIdx.x] += red_u[threadIdx.x + k];
      red_w[threadIdx.x] += red_w[threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = red_u[0];
    partial[2 * blockIdx.x + 1] = red_w[0];
  }
}

// out[0..k) = sum over blocks of partial[block * k + j], blocks in order.
__global__ void sum_partials_kernel(double* out, const double* partial, int blocks, int k) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (int j = 0; j < k; j++) {
    double s = 0.0;
    for (int b = 0; b < blocks; b++) s += partial[b * k + j];
    out[j] = s;
  }
}

__global__ void gradient_norm_squares_kernel(double* partial, const float* x, int64_t n) {
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

// steps[i] = lr * max(min_scale, RMS(W)) / max(1, RMS(U) / clip), sums [n, 2], count [n].
__global__ void adafactor_step_sizes_kernel(float* steps, const double* sums, const double* count, int64_t n, double lr,
                                            double min_scale, double clip) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double rms_u = sqrt(sums[2 * i] / count[i]), rms_w = sqrt(sums[2 * i + 1] / count[i]);
    steps[i] = static_cast<float>(lr * fmax(min_scale, rms_w) / fmax(1.0, rms_u / clip));
  }
}

}  // namespace

DeviceAdafactor::DeviceAdafactor(const ParamTable& table, const AdafactorOptions& opt, Allocator& alloc)
    : opt_(opt), state_(alloc), scratch_(alloc) {
  const size_t n = table.params.size();
  slots_.resize(n);
  int64_t max_rows = 1, max_cols = 1;
  for (size_t i = 0; i < n; i++) {
    const Param& p = table.params[i];
    Slot& s = slots_[i];
    s.factored = adafactor_factored(p, opt);
    const std::string& name = p.name;
    if (s.factored) {
      const size_t nd = p.shape.size();
      s.rows = p.shape[nd - 2];
      s.cols = p.shape[nd - 1];
      s.lead = p.size() / (s.rows * s.cols);
      s.R_global = static_cast<double>(p.global_shape[nd - 2]);
      state_.add(s.vr, name + "/vr", DType::f32, {s.lead * s.rows});
      state_.add(s.vc, name + "/vc", DType::f32, {s.lead * s.cols});
      state_.add(s.vr_sum, name + "/vr_sum", DType::f64, {s.lead});
      max_rows = std::max(max_rows, s.lead * s.rows);
      max_cols = std::max(max_cols, s.lead * s.cols);
    } else {
      state_.add(s.v, name + "/v", DType::f32, {std::max<int64_t>(1, p.size())});
    }
  }
  state_.commit();
  scratch_.add(rows_, "adafactor/rows", DType::f64, {max_rows});
  scratch_.add(cols_, "adafactor/cols", DType::f64, {max_cols});
  scratch_.add(partial_, "adafactor/partial", DType::f64, {2 * kBlocks});
  scratch_.add(sums_, "adafactor/sums", DType::f64, {static_cast<int64_t>(2 * n + 2)});
  scratch_.add(steps_, "adafactor/steps", DType::f32, {static_cast<int64_t>(n + 1)});
  scratch_.add(count_, "adafactor/count", DType::f64, {static_cast<int64_t>(n + 1)});
  scratch_.commit();
  std::vector<double> count(n + 1, 1.0);
  for (size_t i = 0; i < n; i++) count[i] = static_cast<double>(table.params[i].global_size());
  GLAM_CHECK_CUDA(cudaMemcpy(count_.ptr, count.data(), count.size() * sizeof(double), cudaMemcpyHostToDevice));
  for (Slot& s : slots_)
    for (Tensor* t : {&s.v, &s.vr, &s.vc})
      if (t->ptr) GLAM_CHECK_CUDA(cudaMemset(t->ptr, 0, t->bytes()));
}

void DeviceAdafactor::load(const Adafactor& host) {
  GLAM_ASSERT(host.slots().size() == slots_.size());
  for (size_t i = 0; i < slots_.size(); i++) {
    const AdafactorSlot& h = host.slots()[i];
    Slot& s = slots_[i];
    GLAM_ASSERT(h.factored == s.factored);
    auto put = [](Tensor& t, const std::vector<float>& v) {
      if (!v.empty()) GLAM_CHECK_CUDA(cudaMemcpy(t.ptr, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
    };
    if (s.factored) { put(s.vr, h.vr); put(s.vc, h.vc); }
    else put(s.v, h.v);
  }
}

void DeviceAdafactor::store(Adafactor& host) {
  GLAM_ASSERT(host.slots().size() == slots_.size());
  for (size_t i = 0; i < slots_.size(); i++) {
    AdafactorSlot& h = host.slots()[i];
    const Slot& s = slots_[i];
    auto get = [](std::vector<float>& v, const Tensor& t) {
      if (!v.empty()) GLAM_CHECK_CUDA(cudaMemcpy(v.data(), t.ptr, v.size() * sizeof(float), cudaMemcpyDeviceToHost));
    };
    if (s.factored) { get(h.vr, s.vr); get(h.vc, s.vc); }
    else get(h.v, s.v);
  }
}

// vr, vc and the sum of vr (factored), or v, from this step's gradient.
void DeviceAdafactor::statistics(const Context& ctx, const Param& p, Slot& s, const float* g, double rho,
                                 const ReduceModel& reduce_model) {
  const int64_t n = p.size();
  if (!s.factored) {
    launch(adafactor_step_v_kernel, dim3(grid(n)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_v_kernel",
           s.v.f32(), g, n, rho, opt_.eps);
    return;
  }
  const int64_t L = s.lead, R = s.rows, C = s.cols;
  const size_t nd = p.shape.size();
  const bool rows_split = p.model_axis == static_cast<int>(nd) - 2;
  const bool cols_split = p.model_axis == static_cast<int>(nd) - 1;
  const double R_global = s.R_global;
  const double C_global = static_cast<double>(p.global_shape[nd - 1]);
  launch(adafactor_step_rows_kernel, dim3(grid(L * R)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_rows_kernel",
         rows_.f64(), g, L, R, C, opt_.eps);
  launch(adafactor_step_cols_kernel, dim3(grid(L * C)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_cols_kernel",
         cols_.f64(), g, L, R, C, opt_.eps);
  if (cols_split) reduce_model(rows_.f64(), L * R);
  if (rows_split) reduce_model(cols_.f64(), L * C);
  launch(adafactor_step_vr_kernel, dim3(grid(L)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_vr_kernel",
         s.vr.f32(), s.vr_sum.f64(), rows_.f64(), L, R, rho, C_global);
  launch(adafactor_step_vc_kernel, dim3(grid(L * C)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_vc_kernel",
         s.vc.f32(), cols_.f64(), L * C, rho, R_global);
  if (rows_split) reduce_model(s.vr_sum.f64(), L);
}

void DeviceAdafactor::update(const Context& ctx, const Slot& s, const float* g, float* w, int64_t n, size_t i,
                             bool apply, const float* step) {
  const bool f = s.factored;
  launch(adafactor_step_update_kernel, dim3(grid(n)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_update_kernel",
         partial_.f64(), w, g, f ? nullptr : s.v.f32(), f ? s.vr.f32() : nullptr, f ? s.vc.f32() : nullptr,
         f ? s.vr_sum.f64() : nullptr, n, s.rows, s.cols, s.R_global, apply, step);
  if (!apply)
    launch(sum_partials_kernel, dim3(1), dim3(1), 0, ctx.stream(), "sum_partials_kernel", sums_.f64() + 2 * i,
           partial_.f64(), grid(n), 2);
}

void DeviceAdafactor::step(const Context& ctx, const ParamTable& table, const std::vector<Tensor>& w,
                           const std::vector<Tensor>& g, double lr, int64_t t, const Mesh& mesh,
                           const ReduceModel& reduce_model) {
  const double rho = 1.0 - std::pow(static_cast<double>(t + 1), -opt_.decay_pow);
  const size_t n = table.params.size();
  for (size_t i = 0; i < n; i++) {
    statistics(ctx, table.params[i], slots_[i], g[i].f32(), rho, reduce_model);
    update(ctx, slots_[i], g[i].f32(), w[i].f32(), table.params[i].size(), i, false, nullptr);
  }
  if (mesh.data_size == 1 && mesh.model_size == 1) {  // every tensor whole here: steps on the device
    launch(adafactor_step_sizes_kernel, dim3(grid(n)), dim3(kThreads), 0, ctx.stream(), "adafactor_step_sizes_kernel",
           steps_.f32(), sums_.f64(), count_.f64(), static_cast<int64_t>(n), lr, opt_.min_param_scale,
           opt_.clip_threshold);
  } else {  // the sums of sharded tensors cross the mesh on the host
    host_sums_.resize(2 * n);
    GLAM_CHECK_CUDA(cudaMemcpyAsync(host_sums_.data(), sums_.ptr, 2 * n * sizeof(double), cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.sync();
    host_steps_.resize(n);
    for (size_t i = 0; i < n; i++) {
      const Param& p = table.params[i];
      double* sums = host_sums_.data() + 2 * i;
      sum_over_shards(p, mesh, sums, 2);
      const double count = static_cast<double>(p.global_size());
      const double rms_u = std::sqrt(sums[0] / count), rms_w = std::sqrt(sums[1] / count);
      const double clip = std::max(1.0, rms_u / opt_.clip_threshold);
      host_steps_[i] = static_cast<float>(lr * std::max(opt_.min_param_scale, rms_w) / clip);
    }
    GLAM_CHECK_CUDA(cudaMemcpy(steps_.ptr, host_steps_.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
  for (size_t i = 0; i < n; i++)
    update(ctx, slots_[i], g[i].f32(), w[i].f32(), table.params[i].size(), i, true, steps_.f32() + i);
}

int64_t norm_partials() { return kBlocks; }

double gradient_norm(const Context& ctx, const ParamTable& table, const std::vector<Tensor>& g, const Mesh& mesh,
                     const Tensor& partial, const Tensor& sums, std::vector<double>& host) {
  const size_t n = table.params.size();
  GLAM_ASSERT(partial.numel() >= kBlocks && sums.numel() >= static_cast<int64_t>(n));
  for (size_t i = 0; i < n; i++) {
    const int64_t size = table.params[i].size();
    launch(gradient_norm_squares_kernel, dim3(grid(size)), dim3(kThreads), 0, ctx.stream(),
           "gradient_norm_squares_kernel", partial.f64(), g[i].f32(), size);
    launch(sum_partials_kernel, dim3(1), dim3(1), 0, ctx.stream(), "sum_partials_kernel", sums.f64() + i, partial.f64(),
           grid(size), 1);
  }
  host.resize(n);
  GLAM_CHECK_CUDA(cudaMemcpyAsync(host.data(), sums.ptr, n * sizeof(double), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.sync();
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) {
    sum_over_shards(table.params[i], mesh, &host[i], 1);  // whole tensor, replicas counted once
    sum += host[i];
  }
  return std::sqrt(sum);
}

}  // namespace glam::cuda
