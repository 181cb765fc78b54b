// Fused ("flash") attention: the CPU's attention (no 1/sqrt(dh), relative bias
// rb[h, bucket(i-j)], segment mask, one extra logit fixed at 0) without the
// [B, nh, S, S] probabilities. The forward keeps a running max and sum per query
// (the zero logit starts them: m = 0, l = 1) over tiles of keys in shared memory
// and saves only lse = m + log(l) per query; the backward recomputes each
// probability p_ij = exp(a_ij - lse_i) from it. dA_ij = p_ij (dO_i.v_j - D_i)
// with D_i = dO_i.O_i (the zero logit has a zero value vector).
// Deterministic: every output element is summed by one thread in a fixed order.
#include <stdexcept>
#include <vector>

#include "glam/cuda/layers.h"
#include "buckets.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kRows = 64;   // queries (or keys) per block, one per thread
constexpr int kTile = 32;   // keys (or queries) per shared-memory tile

struct Geometry {
  int64_t S, nh, ld;
  __device__ int64_t at(int64_t b, int64_t i, int64_t h) const { return (b * S + i) * ld + h * (ld / nh); }
};

// The block's threads load keys and values [j0, j0 + kTile) of (b, h) and their
// segment ids into shared memory (zeros and segment -2 past the row's end).
template <int DH>
__device__ void load_key_tile(float (*ks)[DH], float (*vs)[DH], int32_t* segs, const float* k, const float* v,
                              const int32_t* seg, const Geometry& g, int64_t b, int64_t h, int64_t j0) {
  for (int64_t x = threadIdx.x; x < kTile * DH; x += blockDim.x) {
    const int64_t jj = x / DH, d = x % DH, j = j0 + jj;
    ks[jj][d] = j < g.S ? k[g.at(b, j, h) + d] : 0.0f;
    vs[jj][d] = j < g.S ? v[g.at(b, j, h) + d] : 0.0f;
  }
  for (int64_t x = threadIdx.x; x < kTile; x += blockDim.x) segs[x] = j0 + x < g.S ? seg[b * g.S + j0 + x] : -2;
}

// grid (S / kRows, nh, B): thread = query i.
template <int DH>
__global__ void flash_forward_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                                     const float* rb, const int32_t* seg, const int* bucket, Geometry g) {
  __shared__ float ks[kTile][DH], vs[kTile][DH];
  __shared__ int32_t segs[kTile];
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = int64_t(blockIdx.x) * kRows, i = i0 + threadIdx.x;
  const bool active = i < g.S;
  float qi[DH], acc[DH];
  float m = 0.0f, l = 1.0f;  // the zero logit
  const int32_t my_seg = active ? seg[b * g.S + i] : -1;
  for (int d = 0; d < DH; d++) { qi[d] = active ? q[g.at(b, i, h) + d] : 0.0f; acc[d] = 0.0f; }
  const int64_t last = std::min<int64_t>(i0 + kRows, g.S);  // keys needed: [0, last)
  for (int64_t j0 = 0; j0 < last; j0 += kTile) {
    __syncthreads();
    load_key_tile<DH>(ks, vs, segs, k, v, seg, g, b, h, j0);
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < kTile; jj++) {
      const int64_t j = j0 + jj;
      if (j > i || segs[jj] != my_seg) continue;
      float a = rb[h * cpu::kRelposBuckets + bucket[i - j]];
      for (int d = 0; d < DH; d++) a += qi[d] * ks[jj][d];
      if (a > m) {
        const float c = expf(m - a);
        l = l * c + 1.0f;
        for (int d = 0; d < DH; d++) acc[d] = acc[d] * c + vs[jj][d];
        m = a;
      } else {
        const float p = expf(a - m);
        l += p;
        for (int d = 0; d < DH; d++) acc[d] += p * vs[jj][d];
      }
    }
  }
  if (!active) return;
  for (int d = 0; d < DH; d++) out[g.at(b, i, h) + d] = acc[d] / l;
  lse[(b * g.nh + h) * g.S + i] = m + logf(l);
}

// D[b, h, i] = dO_i . O_i ; one thread per (b, h, i).
template <int DH>
__global__ void flash_delta_kernel(float* D, const float* dout, const float* out, Geometry g, int64_t n) {
  const int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (x >= n) return;
  const int64_t i = x % g.S, h = (x / g.S) % g.nh, b = x / (g.S * g.nh);
  float s = 0.0f;
  for (int d = 0; d < DH; d++) s += dout[g.at(b, i, h) + d] * out[g.at(b, i, h) + d];
  D[x] = s;
}

// dq_i += sum_j dA_ij k_j ; grid (S / kRows, nh, B), thread = query i.
template <int DH>
__global__ void flash_dq_kernel(float* dq, const float* dout, const float* lse, const float* D, const float* q,
                                const float* k, const float* v, const float* rb, const int32_t* seg,
                                const int* bucket, Geometry g) {
  __shared__ float ks[kTile][DH], vs[kTile][DH];
  __shared__ int32_t segs[kTile];
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = int64_t(blockIdx.x) * kRows, i = i0 + threadIdx.x;
  const bool active = i < g.S;
  float qi[DH], doi[DH], dqi[DH];
  for (int d = 0; d < DH; d++) {
    qi[d] = active ? q[g.at(b, i, h) + d] : 0.0f;
    doi[d] = active ? dout[g.at(b, i, h) + d] : 0.0f;
    dqi[d] = 0.0f;
  }
  const int32_t my_seg = active ? seg[b * g.S + i] : -1;
  const float my_lse = active ? lse[(b * g.nh + h) * g.S + i] : 0.0f;
  const float my_D = active ? D[(b * g.nh + h) * g.S + i] : 0.0f;
  const int64_t last = std::min<int64_t>(i0 + kRows, g.S);
  for (int64_t j0 = 0; j0 < last; j0 += kTile) {
    __syncthreads();
    load_key_tile<DH>(ks, vs, segs, k, v, seg, g, b, h, j0);
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < kTile; jj++) {
      const int64_t j = j0 + jj;
      if (j > i || segs[jj] != my_seg) continue;
      float a = rb[h * cpu::kRelposBuckets + bucket[i - j]], dp = 0.0f;
      for (int d = 0; d < DH; d++) { a += qi[d] * ks[jj][d]; dp += doi[d] * vs[jj][d]; }
      const float ds = expf(a - my_lse) * (dp - my_D);
      for (int d = 0; d < DH; d++) dqi[d] += ds * ks[jj][d];
    }
  }
  if (!active) return;
  for (int d = 0; d < DH; d++) dq[g.at(b, i, h) + d] += dqi[d];
}

// dk_j += sum_i dA_ij q_i ; dv_j += sum_i p_ij dO_i ; grid (S / kRows, nh, B), thread = key j.
template <int DH>
__global__ void flash_dkv_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* D,
                                 const float* q, const float* k, const float* v, const float* rb,
                                 const int32_t* seg, const int* bucket, Geometry g) {
  __shared__ float qs[kTile][DH], dos[kTile][DH];
  __shared__ float lses[kTile], Ds[kTile];
  __shared__ int32_t segs[kTile];
  const int64_t b = blockIdx.z, h = blockIdx.y, j0 = int64_t(blockIdx.x) * kRows, j = j0 + threadIdx.x;
  const bool active = j < g.S;
  float kj[DH], vj[DH], dkj[DH], dvj[DH];
  for (int d = 0; d < DH; d++) {
    kj[d] = active ? k[g.at(b, j, h) + d] : 0.0f;
    vj[d] = active ? v[g.at(b, j, h) + d] : 0.0f;
    dkj[d] = dvj[d] = 0.0f;
  }
  const int32_t my_seg = active ? seg[b * g.S + j] : -1;
  for (int64_t i0 = j0; i0 < g.S; i0 += kTile) {  // queries i >= j
    __syncthreads();
    for (int64_t x = threadIdx.x; x < kTile * DH; x += blockDim.x) {
      const int64_t ii = x / DH, d = x % DH, i = i0 + ii;
      qs[ii][d] = i < g.S ? q[g.at(b, i, h) + d] : 0.0f;
      dos[ii][d] = i < g.S ? dout[g.at(b, i, h) + d] : 0.0f;
    }
    for (int64_t x = threadIdx.x; x < kTile; x += blockDim.x) {
      const int64_t i = i0 + x;
      segs[x] = i < g.S ? seg[b * g.S + i] : -2;
      lses[x] = i < g.S ? lse[(b * g.nh + h) * g.S + i] : 0.0f;
      Ds[x] = i < g.S ? D[(b * g.nh + h) * g.S + i] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    for (int ii = 0; ii < kTile; ii++) {
      const int64_t i = i0 + ii;
      if (i < j || i >= g.S || segs[ii] != my_seg) continue;
      float a = rb[h * cpu::kRelposBuckets + bucket[i - j]], dp = 0.0f;
      for (int d = 0; d < DH; d++) { a += qs[ii][d] * kj[d]; dp += dos[ii][d] * vj[d]; }
      const float p = expf(a - lses[ii]);
      const float ds = p * (dp - Ds[ii]);
      for (int d = 0; d < DH; d++) { dvj[d] += p * dos[ii][d]; dkj[d] += ds * qs[ii][d]; }
    }
  }
  if (!active) return;
  for (int d = 0; d < DH; d++) {
    dk[g.at(b, j, h) + d] += dkj[d];
    dv[g.at(b, j, h) + d] += dvj[d];
  }
}

// drb[h, bucket] += sum of dA_ij over the pairs at the bucket's distances;
// grid (32, nh), a fixed-order block reduction.
template <int DH>
__global__ void flash_drb_kernel(float* drb, const float* dout, const float* lse, const float* D, const float* q,
                                 const float* k, const float* v, const float* rb, const int32_t* seg,
                                 const int* lo, const int* hi, int64_t B, Geometry g) {
  __shared__ float red[128];
  const int bk = blockIdx.x;
  const int64_t h = blockIdx.y, span = hi[bk] - lo[bk];
  float s = 0.0f;
  for (int64_t n = threadIdx.x; n < B * g.S * span; n += blockDim.x) {
    const int64_t b = n / (g.S * span), i = (n / span) % g.S, j = i - (lo[bk] + n % span);
    if (j < 0 || seg[b * g.S + j] != seg[b * g.S + i]) continue;
    float a = rb[h * cpu::kRelposBuckets + bk], dp = 0.0f;
    const float *qi = q + g.at(b, i, h), *kj = k + g.at(b, j, h), *doi = dout + g.at(b, i, h), *vj = v + g.at(b, j, h);
    for (int d = 0; d < DH; d++) { a += qi[d] * kj[d]; dp += doi[d] * vj[d]; }
    const int64_t row = (b * g.nh + h) * g.S + i;
    s += expf(a - lse[row]) * (dp - D[row]);
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0 && span > 0) drb[h * cpu::kRelposBuckets + bk] += s;
}

template <int DH>
void forward_dh(const Context& ctx, float* out, float* lse, const float* q, const float* k, const float* v,
                const float* rb, const int32_t* seg, int64_t B, int64_t S, int64_t nh) {
  BucketTables t(S);
  const dim3 grid(static_cast<unsigned>((S + kRows - 1) / kRows), static_cast<unsigned>(nh), static_cast<unsigned>(B));
  flash_forward_kernel<DH><<<grid, kRows, 0, ctx.stream()>>>(out, lse, q, k, v, rb, seg, t.of_distance.data(),
                                                             Geometry{S, nh, nh * DH});
  check(cudaGetLastError(), "attention_flash_forward");
  ctx.sync();
}

template <int DH>
void backward_dh(const Context& ctx, float* dq, float* dk, float* dv, float* drb, const float* dout,
                 const float* out, const float* lse, const float* q, const float* k, const float* v,
                 const int32_t* seg, int64_t B, int64_t S, int64_t nh, const float* rb) {
  BucketTables t(S);
  const Geometry g{S, nh, nh * DH};
  const int64_t rows = B * nh * S;
  Buffer<float> D(rows);
  flash_delta_kernel<DH><<<grid_for(rows, 128), 128, 0, ctx.stream()>>>(D.data(), dout, out, g, rows);
  const dim3 grid(static_cast<unsigned>((S + kRows - 1) / kRows), static_cast<unsigned>(nh), static_cast<unsigned>(B));
  flash_dq_kernel<DH><<<grid, kRows, 0, ctx.stream()>>>(dq, dout, lse, D.data(), q, k, v, rb, seg,
                                                        t.of_distance.data(), g);
  flash_dkv_kernel<DH><<<grid, kRows, 0, ctx.stream()>>>(dk, dv, dout, lse, D.data(), q, k, v, rb, seg,
                                                         t.of_distance.data(), g);
  flash_drb_kernel<DH><<<dim3(cpu::kRelposBuckets, static_cast<unsigned>(nh)), 128, 0, ctx.stream()>>>(
      drb, dout, lse, D.data(), q, k, v, rb, seg, t.lo.data(), t.hi.data(), B, g);
  check(cudaGetLastError(), "attention_flash_backward");
  ctx.sync();
}

}  // namespace

bool flash_attention_supports(int64_t dh) { return dh == 16 || dh == 32 || dh == 64 || dh == 128; }

void attention_flash_forward(const Context& ctx, float* out, float* lse, const float* q, const float* k,
                             const float* v, const float* rb, const int32_t* segments, int64_t B, int64_t S,
                             int64_t nh, int64_t dh) {
  if (B == 0 || S == 0) return;
  switch (dh) {
    case 16: return forward_dh<16>(ctx, out, lse, q, k, v, rb, segments, B, S, nh);
    case 32: return forward_dh<32>(ctx, out, lse, q, k, v, rb, segments, B, S, nh);
    case 64: return forward_dh<64>(ctx, out, lse, q, k, v, rb, segments, B, S, nh);
    case 128: return forward_dh<128>(ctx, out, lse, q, k, v, rb, segments, B, S, nh);
    default: throw std::runtime_error("attention_flash_forward: d_head must be 16, 32, 64 or 128");
  }
}

void attention_flash_backward(const Context& ctx, float* dq, float* dk, float* dv, float* drb, const float* dout,
                              const float* out, const float* lse, const float* q, const float* k, const float* v,
                              const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                              int64_t dh) {
  if (B == 0 || S == 0) return;
  switch (dh) {
    case 16: return backward_dh<16>(ctx, dq, dk, dv, drb, dout, out, lse, q, k, v, segments, B, S, nh, rb);
    case 32: return backward_dh<32>(ctx, dq, dk, dv, drb, dout, out, lse, q, k, v, segments, B, S, nh, rb);
    case 64: return backward_dh<64>(ctx, dq, dk, dv, drb, dout, out, lse, q, k, v, segments, B, S, nh, rb);
    case 128: return backward_dh<128>(ctx, dq, dk, dv, drb, dout, out, lse, q, k, v, segments, B, S, nh, rb);
    default: throw std::runtime_error("attention_flash_backward: d_head must be 16, 32, 64 or 128");
  }
}

}  // namespace glam::cuda
