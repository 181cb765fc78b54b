// Causal attention on the GPU, exactly the CPU's (src/layers/cpu/attention.cpp): no
// 1/sqrt(dh), relative bias rb[h, bucket(i-j)], segment mask, one extra logit
// fixed at 0. Correct first: one block per query row, fp32 throughout, probs
// [B, nh, S, S] saved for the backward. A fused flash-style kernel replaces
// this once the GPU tests hold it against the same reference.
#include <vector>

#include "glam/layers/cuda/layers.h"
#include "buckets.cuh"
#include "drb_reduce.cuh"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kDrbRows = 64;  // queries per block of the bias gradient's partial sums

// grid (S, nh, B): row i of head h of batch row b.
__global__ void attention_forward_kernel(float* out, float* probs, const float* q, const float* k,
                               const float* v, const float* rb, const int32_t* segments,
                               const int* bucket, int64_t S, int64_t nh, int64_t dh) {
  GLAM_DYNAMIC_SHARED(float, smem);
  float* p = smem;              // [S]
  float* red = smem + S;        // [kThreads]
  const int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, ld = nh * dh;
  const float* qi = q + (b * S + i) * ld + h * dh;
  const int32_t* seg = segments + b * S;
  float m = 0.0f;  // the zero logit takes part in the max
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    float a = -INFINITY;
    if (j <= i && seg[j] == seg[i]) {
      const float* kj = k + (b * S + j) * ld + h * dh;
      float dot = 0.0f;
      for (int64_t d = 0; d < dh; d++) dot += qi[d] * kj[d];
      a = dot + rb[h * cpu::kRelposBuckets + bucket[i - j]];
      m = fmaxf(m, a);
    }
    p[j] = a;
  }
  m = block_max(m, red);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - m);
    s += p[j];
  }
  const float denom = block_sum(s, red) + expf(-m);
  float* prow = probs + ((b * nh + h) * S + i) * S;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    p[j] /= denom;
    prow[j] = p[j];
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < dh; d += blockDim.x) {
    float o = 0.0f;
    for (int64_t j = 0; j <= i; j++) o += p[j] * v[(b * S + j) * ld + h * dh + d];
    out[(b * S + i) * ld + h * dh + d] = o;
  }
}

// dA_ij = p_ij (dP_ij - sum_k p_ik dP_ik), dP_ij = dO_i . v_j; grid (S, nh, B).
__global__ void attention_backward_dA_kernel(float* dA, const float* dout, const float* probs, const float* v,
                          int64_t S, int64_t nh, int64_t dh) {
  GLAM_DYNAMIC_SHARED(float, smem);
  float* dP = smem;          // [S]
  float* red = smem + S;     // [kThreads]
  const int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, ld = nh * dh;
  const float* prow = probs + ((b * nh + h) * S + i) * S;
  const float* doi = dout + (b * S + i) * ld + h * dh;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    float d = 0.0f;
    if (j <= i) {
      const float* vj = v + (b * S + j) * ld + h * dh;
      for (int64_t c = 0; c < dh; c++) d += doi[c] * vj[c];
    }
    dP[j] = d;
    dot += prow[j] * d;
  }
  dot = block_sum(dot, red);
  float* arow = dA + ((b * nh + h) * S + i) * S;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) arow[j] = j <= i ? prow[j] * (dP[j] - dot) : 0.0f;
}

// dq_i += sum_j dA_ij k_j ; grid (S, nh, B), threads over dh.
__global__ void attention_backward_dq_kernel(float* dq, const float* dA, const float* k, int64_t S, int64_t nh, int64_t dh) {
  const int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, ld = nh * dh;
  const float* arow = dA + ((b * nh + h) * S + i) * S;
  for (int64_t d = threadIdx.x; d < dh; d += blockDim.x) {
    float s = 0.0f;
    for (int64_t j = 0; j <= i; j++) s += arow[j] * k[(b * S + j) * ld + h * dh + d];
    dq[(b * S + i) * ld + h * dh + d] += s;
  }
}

// dk_j += sum_i dA_ij q_i ; dv_j += sum_i p_ij dO_i ; grid (S, nh, B) over keys j.
__global__ void attention_backward_dkv_kernel(float* dk, float* dv, const float* dA, const float* probs, const float* q,
                           const float* dout, int64_t S, int64_t nh, int64_t dh) {
  const int64_t j = blockIdx.x, h = blockIdx.y, b = blockIdx.z, ld = nh * dh;
  const float* A = dA + (b * nh + h) * S * S;
  const float* P = probs + (b * nh + h) * S * S;
  for (int64_t d = threadIdx.x; d < dh; d += blockDim.x) {
    float sk = 0.0f, sv = 0.0f;
    for (int64_t i = j; i < S; i++) {
      const int64_t off = (b * S + i) * ld + h * dh + d;
      sk += A[i * S + j] * q[off];
      sv += P[i * S + j] * dout[off];
    }
    dk[(b * S + j) * ld + h * dh + d] += sk;
    dv[(b * S + j) * ld + h * dh + d] += sv;
  }
}

// partial[b, h, tile, bucket]: the sum of dA_ij over the tile's kDrbRows queries i
// and the keys j of i's segment at the bucket's distances. A thread per distance d
// sums its diagonal over the tile's rows in order (neighbouring threads read
// neighbouring j: coalesced), then thread `bucket` adds its distances in order.
// grid (tiles, nh, B), dynamic shared memory: a float per distance.
__global__ void attention_backward_drb_kernel(float* partial, const float* dA, const int32_t* segments,
                                              const int* lo, const int* hi, int64_t S, int64_t nh) {
  GLAM_DYNAMIC_SHARED(float, diag);  // [min(i0 + kDrbRows, S)]
  const int64_t tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t i0 = tile * kDrbRows, i1 = std::min<int64_t>(i0 + kDrbRows, S);
  const float* A = dA + (b * nh + h) * S * S;
  const int32_t* seg = segments + b * S;
  for (int64_t d = threadIdx.x; d < i1; d += blockDim.x) {
    float s = 0.0f;
    for (int64_t i = std::max(i0, d); i < i1; i++)
      if (seg[i - d] == seg[i]) s += A[i * S + i - d];
    diag[d] = s;
  }
  __syncthreads();
  if (threadIdx.x < cpu::kRelposBuckets) {
    const int bk = threadIdx.x;
    float s = 0.0f;
    for (int64_t d = lo[bk]; d < std::min<int64_t>(hi[bk], i1); d++) s += diag[d];
    partial[((b * nh + h) * gridDim.x + tile) * cpu::kRelposBuckets + bk] = s;
  }
}

}  // namespace

void attention_forward(const Context& ctx, float* out, float* probs, const float* q, const float* k,
                       const float* v, const float* rb, const int32_t* segments, int64_t B,
                       int64_t S, int64_t nh, int64_t dh) {
  if (B == 0 || S == 0) return;
  const BucketTables& buckets = ctx.buckets(S);
  const dim3 grid(static_cast<unsigned>(S), static_cast<unsigned>(nh), static_cast<unsigned>(B));
  const size_t shared = (S + kThreads) * sizeof(float);
  launch(attention_forward_kernel, grid, kThreads, shared, ctx.stream(), "attention_forward_kernel", out, probs, q, k,
         v, rb, segments, buckets.of_distance.data(), S, nh, dh);
}

void attention_backward(const Context& ctx, float* dq, float* dk, float* dv, float* drb,
                        float* dA_scratch, const float* dout, const float* probs, const float* q,
                        const float* k, const float* v, const int32_t* segments, int64_t B,
                        int64_t S, int64_t nh, int64_t dh) {
  if (B == 0 || S == 0) return;
  const dim3 grid(static_cast<unsigned>(S), static_cast<unsigned>(nh), static_cast<unsigned>(B));
  const size_t shared = (S + kThreads) * sizeof(float);
  launch(attention_backward_dA_kernel, grid, kThreads, shared, ctx.stream(), "attention_backward_dA_kernel",
         dA_scratch, dout, probs, v, S, nh, dh);
  launch(attention_backward_dq_kernel, grid, kThreads, 0, ctx.stream(), "attention_backward_dq_kernel", dq,
         dA_scratch, k, S, nh, dh);
  launch(attention_backward_dkv_kernel, grid, kThreads, 0, ctx.stream(), "attention_backward_dkv_kernel", dk, dv,
         dA_scratch, probs, q, dout, S, nh, dh);
  const BucketTables& buckets = ctx.buckets(S);
  const int64_t tiles = (S + kDrbRows - 1) / kDrbRows;
  float* partial = static_cast<float*>(ctx.scratch(kScratchDrb, B * nh * tiles * cpu::kRelposBuckets * sizeof(float)));
  launch(attention_backward_drb_kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(nh),
         static_cast<unsigned>(B)), kThreads, S * sizeof(float), ctx.stream(),
         "attention_backward_drb_kernel", partial, dA_scratch, segments, buckets.lo.data(), buckets.hi.data(),
         S, nh);
  reduce_drb(ctx, drb, partial, buckets, B, nh, tiles);
}

}  // namespace glam::cuda
