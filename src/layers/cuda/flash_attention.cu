// Fused ("flash") attention: the CPU's attention (no 1/sqrt(dh), relative bias
// rb[h, bucket(i-j)], segment mask, one extra logit fixed at 0) without the
// [B, nh, S, S] probabilities. The forward keeps a running max and sum per query
// (the zero logit starts them: m = 0, l = 1) over tiles of keys and saves only
// lse = m + log(l) per query; the backward recomputes each probability
// p_ij = exp(a_ij - lse_i) from it. dA_ij = p_ij (dO_i.v_j - D_i) with
// D_i = dO_i.O_i (the zero logit has a zero value vector).
//
// Layout (Cfg): a block holds kRows rows of one (b, h) -- queries, or keys for
// dk/dv -- with kParts threads per row, each owning kSlice of the head's dims
// (d = part + kParts * t); the other side streams through shared memory kTile
// rows at a time. Per tile the block first computes the kRows x kTile logits
// (each thread whole dot products, for kTile / kParts entries of its row), then
// every thread updates its own slice from them. The rows the dot products read
// are in (dynamic) shared memory, so a thread's registers hold at most two
// slices of 32 floats: no spills at any d_head.
//
// The bias gradient is a by-product of dq: each dq block sums its dA_ij per
// bucket (a thread per diagonal of the tile, then a thread per bucket over its
// diagonals, in order) into partial[b, h, query tile, bucket], which
// attention_backward_drb_reduce_kernel adds up in a fixed order.
// Deterministic: every output element is summed by one thread in a fixed order.
#include <stdexcept>
#include <vector>

#include "glam/layers/cuda/layers.h"
#include "buckets.cuh"
#include "drb_reduce.cuh"
#include "launch.cuh"
#include "reduce.cuh"

namespace glam::cuda {

namespace {

template <int DH>
struct Cfg {
  static constexpr int kSlice = DH < 32 ? DH : 32;  // head dims per thread
  static constexpr int kParts = DH / kSlice;         // threads per row
  static constexpr int kRows = 64;                   // rows per block
  static constexpr int kTile = 32;                   // rows of the other side per tile
  static constexpr int kThreads = kRows * kParts;
  static constexpr int kLd = DH + 1;                 // padded rows: no shared-memory bank conflicts
  static constexpr int kTileLd = kTile + 1;
  static constexpr int kDiagonals = kRows + kTile - 1;
  static_assert(kTile % kParts == 0 && kThreads >= cpu::kRelposBuckets, "flash attention tiling");
};

struct Geometry {
  int64_t S, nh, ld;
  __device__ int64_t at(int64_t b, int64_t i, int64_t h) const { return (b * S + i) * ld + h * (ld / nh); }
};

// Consecutive pieces of the block's dynamic shared memory.
struct Carve {
  float* p;
  __device__ float* take(int64_t n) { float* r = p; p += n; return r; }
  __device__ int32_t* take_int(int64_t n) { return reinterpret_cast<int32_t*>(take(n)); }
};

// Rows [r0, r0 + n) of (b, h) of x into dst [n][DH + 1] (zeros past the row's end),
// and optionally their segment ids (`past` past the end), by the whole block.
template <int DH>
__device__ void load_rows(float* dst, const float* x, const Geometry& g, int64_t b, int64_t h, int64_t r0, int n) {
  for (int64_t e = threadIdx.x; e < int64_t(n) * DH; e += blockDim.x) {
    const int64_t rr = e / DH, d = e % DH, row = r0 + rr;
    dst[rr * (DH + 1) + d] = row < g.S ? x[g.at(b, row, h) + d] : 0.0f;
  }
}

__device__ void load_segments(int32_t* dst, const int32_t* seg, const Geometry& g, int64_t b, int64_t r0, int n,
                              int32_t past) {
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) dst[e] = r0 + e < g.S ? seg[b * g.S + r0 + e] : past;
}

// Per-row values [b, h, r0 + e] of a [B, nh, S] tensor (0 past the end).
__device__ void load_row_values(float* dst, const float* x, const Geometry& g, int64_t b, int64_t h, int64_t r0,
                                int n) {
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x)
    dst[e] = r0 + e < g.S ? x[(b * g.nh + h) * g.S + r0 + e] : 0.0f;
}

template <int DH>
__device__ float dot(const float* a, const float* b) {
  float s = 0.0f;
  for (int d = 0; d < DH; d++) s += a[d] * b[d];
  return s;
}

// A block's shared copies of n rows as keys: their k and v rows and segment ids.
struct KeyRows {
  float *k, *v;
  int32_t* seg;
};
// ... and as queries of the backward: q and dO rows, log-sum-exp, D = dO . O, segment ids.
struct QueryRows {
  float *q, *dout, *lse, *D;
  int32_t* seg;
};

template <int DH>
__device__ KeyRows take_key_rows(Carve& carve, int n) {
  return {carve.take(n * (DH + 1)), carve.take(n * (DH + 1)), carve.take_int(n)};
}
template <int DH>
__device__ QueryRows take_query_rows(Carve& carve, int n) {
  return {carve.take(n * (DH + 1)), carve.take(n * (DH + 1)), carve.take(n), carve.take(n), carve.take_int(n)};
}

// Rows [r0, r0 + n) of (b, h) into dst (`past` as the segment id past the end).
template <int DH>
__device__ void load_keys(const KeyRows& dst, const float* k, const float* v, const int32_t* seg, const Geometry& g,
                          int64_t b, int64_t h, int64_t r0, int n, int32_t past) {
  load_rows<DH>(dst.k, k, g, b, h, r0, n);
  load_rows<DH>(dst.v, v, g, b, h, r0, n);
  load_segments(dst.seg, seg, g, b, r0, n, past);
}
template <int DH>
__device__ void load_queries(const QueryRows& dst, const float* q, const float* dout, const float* lse,
                             const float* D, const int32_t* seg, const Geometry& g, int64_t b, int64_t h, int64_t r0,
                             int n, int32_t past) {
  load_rows<DH>(dst.q, q, g, b, h, r0, n);
  load_rows<DH>(dst.dout, dout, g, b, h, r0, n);
  load_row_values(dst.lse, lse, g, b, h, r0, n);
  load_row_values(dst.D, D, g, b, h, r0, n);
  load_segments(dst.seg, seg, g, b, r0, n, past);
}

// One visible (query i, key j) pair of the backward: p_ij = exp(q_i . k_j + bias - lse_i)
// and dA_ij = p_ij (dO_i . v_j - D_i).
struct PairGradient {
  float p, dA;
};
template <int DH>
__device__ PairGradient pair_gradient(const float* qi, const float* kj, const float* doi, const float* vj, float bias,
                                      float lse_i, float D_i) {
  const float a = dot<DH>(qi, kj) + bias;
  const float dp = dot<DH>(doi, vj);
  const float p = expf(a - lse_i);
  return {p, p * (dp - D_i)};
}

template <int DH>
constexpr size_t forward_shared_floats() {
  using C = Cfg<DH>;
  return C::kRows * C::kLd + 2 * C::kTile * C::kLd + C::kRows * C::kTileLd + C::kRows + C::kTile;
}

// grid (S / kRows, nh, B): row r = query i0 + r.
template <int DH>
__global__ void __launch_bounds__(Cfg<DH>::kThreads, 2)
attention_flash_forward_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                               const float* rb, const int32_t* seg, const int* bucket, Geometry g) {
  using C = Cfg<DH>;
  GLAM_DYNAMIC_SHARED(float, smem);
  Carve carve{smem};
  float* qs = carve.take(C::kRows * C::kLd);
  int32_t* qseg = carve.take_int(C::kRows);
  const KeyRows K = take_key_rows<DH>(carve, C::kTile);  // the tile's keys
  float* sc = carve.take(C::kRows * C::kTileLd);          // the tile's logits, -inf where masked
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = int64_t(blockIdx.x) * C::kRows;
  const int r = threadIdx.x / C::kParts, part = threadIdx.x % C::kParts;
  const int64_t i = i0 + r;
  const float* rbh = rb + h * cpu::kRelposBuckets;
  load_rows<DH>(qs, q, g, b, h, i0, C::kRows);
  load_segments(qseg, seg, g, b, i0, C::kRows, -1);
  float acc[C::kSlice];
  GLAM_UNROLL
  for (int t = 0; t < C::kSlice; t++) acc[t] = 0.0f;
  float m = 0.0f, l = 1.0f;  // the zero logit
  const int64_t last = std::min<int64_t>(i0 + C::kRows, g.S);  // keys needed: [0, last)
  for (int64_t j0 = 0; j0 < last; j0 += C::kTile) {
    __syncthreads();  // the previous tile is consumed (and the query rows are in)
    load_keys<DH>(K, k, v, seg, g, b, h, j0, C::kTile, -2);
    __syncthreads();
    for (int e = 0; e < C::kTile / C::kParts; e++) {
      const int jj = part + C::kParts * e;
      const int64_t j = j0 + jj;
      float a = -INFINITY;
      if (i < g.S && j <= i && K.seg[jj] == qseg[r])
        a = dot<DH>(qs + r * C::kLd, K.k + jj * C::kLd) + rbh[bucket[i - j]];
      sc[r * C::kTileLd + jj] = a;
    }
    __syncthreads();
    // Every part of row r computes the same running max and sum from the row's logits.
    const float* row = sc + r * C::kTileLd;
    float mt = m;
    for (int jj = 0; jj < C::kTile; jj++) mt = fmaxf(mt, row[jj]);
    const float c = expf(m - mt);
    l *= c;
    GLAM_UNROLL
    for (int t = 0; t < C::kSlice; t++) acc[t] *= c;
    for (int jj = 0; jj < C::kTile; jj++) {
      if (row[jj] == -INFINITY) continue;
      const float p = expf(row[jj] - mt);
      l += p;
      const float* vj = K.v + jj * C::kLd + part;
      GLAM_UNROLL
      for (int t = 0; t < C::kSlice; t++) acc[t] += p * vj[C::kParts * t];
    }
    m = mt;
  }
  if (i >= g.S) return;
  float* o = out + g.at(b, i, h) + part;
  GLAM_UNROLL
  for (int t = 0; t < C::kSlice; t++) o[C::kParts * t] = acc[t] / l;
  if (part == 0) lse[(b * g.nh + h) * g.S + i] = m + logf(l);
}

// D[b, h, i] = dO_i . O_i ; a thread per (b, h, i), striding by the grid.
template <int DH>
__global__ void attention_flash_backward_delta_kernel(float* D, const float* dout, const float* out, Geometry g,
                                                      int64_t n) {
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < n; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = x % g.S, h = (x / g.S) % g.nh, b = x / (g.S * g.nh);
    D[x] = dot<DH>(dout + g.at(b, i, h), out + g.at(b, i, h));
  }
}

template <int DH>
constexpr size_t dq_shared_floats() {
  using C = Cfg<DH>;
  return 2 * C::kRows * C::kLd + 2 * C::kTile * C::kLd + C::kRows * C::kTileLd + C::kDiagonals + 3 * C::kRows +
         C::kTile;
}

// dq_i += sum_j dA_ij k_j, and the block's bias-gradient partial sums;
// grid (S / kRows, nh, B), row r = query i0 + r.
template <int DH>
__global__ void __launch_bounds__(Cfg<DH>::kThreads, 2)
attention_flash_backward_dq_kernel(float* dq, float* drb_partial, const float* dout, const float* lse,
                                   const float* D, const float* q, const float* k, const float* v, const float* rb,
                                   const int32_t* seg, const int* bucket, const int* lo, const int* hi,
                                   Geometry g) {
  using C = Cfg<DH>;
  GLAM_DYNAMIC_SHARED(float, smem);
  Carve carve{smem};
  const QueryRows Q = take_query_rows<DH>(carve, C::kRows);  // the block's queries
  const KeyRows K = take_key_rows<DH>(carve, C::kTile);       // the tile's keys
  float* ds = carve.take(C::kRows * C::kTileLd);  // the tile's dA, 0 where masked
  float* diag = carve.take(C::kDiagonals);         // its sums along each diagonal r - jj
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = int64_t(blockIdx.x) * C::kRows;
  const int r = threadIdx.x / C::kParts, part = threadIdx.x % C::kParts;
  const int64_t i = i0 + r;
  const float* rbh = rb + h * cpu::kRelposBuckets;
  load_queries<DH>(Q, q, dout, lse, D, seg, g, b, h, i0, C::kRows, -1);
  // thread `bk` < 32 owns bucket bk's sum, over distances [lo, hi)
  const bool owner = threadIdx.x < cpu::kRelposBuckets;
  const int64_t bucket_lo = owner ? lo[threadIdx.x] : 0, bucket_hi = owner ? hi[threadIdx.x] : 0;
  float bucket_sum = 0.0f;
  float acc[C::kSlice];
  GLAM_UNROLL
  for (int t = 0; t < C::kSlice; t++) acc[t] = 0.0f;
  const int64_t last = std::min<int64_t>(i0 + C::kRows, g.S);
  for (int64_t j0 = 0; j0 < last; j0 += C::kTile) {
    __syncthreads();  // the previous tile and its diagonal sums are consumed
    load_keys<DH>(K, k, v, seg, g, b, h, j0, C::kTile, -2);
    __syncthreads();
    for (int e = 0; e < C::kTile / C::kParts; e++) {
      const int jj = part + C::kParts * e;
      const int64_t j = j0 + jj;
      float dA = 0.0f;
      if (i < g.S && j <= i && K.seg[jj] == Q.seg[r])
        dA = pair_gradient<DH>(Q.q + r * C::kLd, K.k + jj * C::kLd, Q.dout + r * C::kLd, K.v + jj * C::kLd,
                               rbh[bucket[i - j]], Q.lse[r], Q.D[r]).dA;
      ds[r * C::kTileLd + jj] = dA;
    }
    __syncthreads();
    const float* row = ds + r * C::kTileLd;
    for (int jj = 0; jj < C::kTile; jj++) {
      const float* kj = K.k + jj * C::kLd + part;
      GLAM_UNROLL
      for (int t = 0; t < C::kSlice; t++) acc[t] += row[jj] * kj[C::kParts * t];
    }
    for (int x = threadIdx.x; x < C::kDiagonals; x += blockDim.x) {  // r - jj = x - (kTile - 1)
      const int o = x - (C::kTile - 1);
      float s = 0.0f;
      const int r1 = C::kTile + o < C::kRows ? C::kTile + o : C::kRows;
      for (int rr = o > 0 ? o : 0; rr < r1; rr++) s += ds[rr * C::kTileLd + rr - o];
      diag[x] = s;
    }
    __syncthreads();
    if (owner) {  // diagonal x is at distance i - j = base + x - (kTile - 1)
      const int64_t shift = (i0 - j0) - (C::kTile - 1);
      const int64_t x0 = bucket_lo - shift > 0 ? bucket_lo - shift : 0;
      const int64_t x1 = bucket_hi - shift < C::kDiagonals ? bucket_hi - shift : C::kDiagonals;
      for (int64_t x = x0; x < x1; x++) bucket_sum += diag[x];
    }
  }
  if (owner)
    drb_partial[((b * g.nh + h) * gridDim.x + blockIdx.x) * cpu::kRelposBuckets + threadIdx.x] = bucket_sum;
  if (i >= g.S) return;
  float* o = dq + g.at(b, i, h) + part;
  GLAM_UNROLL
  for (int t = 0; t < C::kSlice; t++) o[C::kParts * t] += acc[t];
}

template <int DH>
constexpr size_t dkv_shared_floats() {
  using C = Cfg<DH>;
  return 2 * C::kRows * C::kLd + 2 * C::kTile * C::kLd + 2 * C::kRows * C::kTileLd + C::kRows + 3 * C::kTile;
}

// dk_j += sum_i dA_ij q_i ; dv_j += sum_i p_ij dO_i ; grid (S / kRows, nh, B), row r = key j0 + r.
template <int DH>
__global__ void __launch_bounds__(Cfg<DH>::kThreads, 2)
attention_flash_backward_dkv_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* D,
                                    const float* q, const float* k, const float* v, const float* rb,
                                    const int32_t* seg, const int* bucket, Geometry g) {
  using C = Cfg<DH>;
  GLAM_DYNAMIC_SHARED(float, smem);
  Carve carve{smem};
  const KeyRows K = take_key_rows<DH>(carve, C::kRows);       // the block's keys
  const QueryRows Q = take_query_rows<DH>(carve, C::kTile);  // the tile's queries
  float* ps = carve.take(C::kRows * C::kTileLd);   // the tile's p_ij, 0 where masked
  float* dss = carve.take(C::kRows * C::kTileLd);  // and dA_ij
  const int64_t b = blockIdx.z, h = blockIdx.y, j0 = int64_t(blockIdx.x) * C::kRows;
  const int r = threadIdx.x / C::kParts, part = threadIdx.x % C::kParts;
  const int64_t j = j0 + r;
  const float* rbh = rb + h * cpu::kRelposBuckets;
  load_keys<DH>(K, k, v, seg, g, b, h, j0, C::kRows, -1);
  float dk_acc[C::kSlice], dv_acc[C::kSlice];
  GLAM_UNROLL
  for (int t = 0; t < C::kSlice; t++) dk_acc[t] = dv_acc[t] = 0.0f;
  for (int64_t i0 = j0; i0 < g.S; i0 += C::kTile) {  // queries i >= j
    __syncthreads();
    load_queries<DH>(Q, q, dout, lse, D, seg, g, b, h, i0, C::kTile, -2);
    __syncthreads();
    for (int e = 0; e < C::kTile / C::kParts; e++) {
      const int ii = part + C::kParts * e;
      const int64_t i = i0 + ii;
      PairGradient pg{0.0f, 0.0f};
      if (j < g.S && i < g.S && i >= j && Q.seg[ii] == K.seg[r])
        pg = pair_gradient<DH>(Q.q + ii * C::kLd, K.k + r * C::kLd, Q.dout + ii * C::kLd, K.v + r * C::kLd,
                               rbh[bucket[i - j]], Q.lse[ii], Q.D[ii]);
      ps[r * C::kTileLd + ii] = pg.p;
      dss[r * C::kTileLd + ii] = pg.dA;
    }
    __syncthreads();
    for (int ii = 0; ii < C::kTile; ii++) {
      const float p = ps[r * C::kTileLd + ii], dA = dss[r * C::kTileLd + ii];
      const float *doi = Q.dout + ii * C::kLd + part, *qi = Q.q + ii * C::kLd + part;
      GLAM_UNROLL
      for (int t = 0; t < C::kSlice; t++) {
        dv_acc[t] += p * doi[C::kParts * t];
        dk_acc[t] += dA * qi[C::kParts * t];
      }
    }
  }
  if (j >= g.S) return;
  float *dkj = dk + g.at(b, j, h) + part, *dvj = dv + g.at(b, j, h) + part;
  GLAM_UNROLL
  for (int t = 0; t < C::kSlice; t++) {
    dkj[C::kParts * t] += dk_acc[t];
    dvj[C::kParts * t] += dv_acc[t];
  }
}

template <int DH>
dim3 row_grid(int64_t S, int64_t nh, int64_t B) {
  return dim3(static_cast<unsigned>((S + Cfg<DH>::kRows - 1) / Cfg<DH>::kRows), static_cast<unsigned>(nh),
              static_cast<unsigned>(B));
}

template <int DH>
void forward_dh(const Context& ctx, float* out, float* lse, const float* q, const float* k, const float* v,
                const float* rb, const int32_t* seg, int64_t B, int64_t S, int64_t nh) {
  const BucketTables& t = ctx.buckets(S);
  const size_t shared = forward_shared_floats<DH>() * sizeof(float);
  allow_shared(attention_flash_forward_kernel<DH>, shared, "attention_flash_forward_kernel");
  launch(attention_flash_forward_kernel<DH>, row_grid<DH>(S, nh, B), Cfg<DH>::kThreads, shared, ctx.stream(),
         "attention_flash_forward_kernel", out, lse, q, k, v, rb, seg, t.of_distance.data(), Geometry{S, nh, nh * DH});
}

template <int DH>
void backward_dh(const Context& ctx, float* dq, float* dk, float* dv, float* drb, const float* dout,
                 const float* out, const float* lse, const float* q, const float* k, const float* v,
                 const int32_t* seg, int64_t B, int64_t S, int64_t nh, const float* rb) {
  using C = Cfg<DH>;
  const BucketTables& t = ctx.buckets(S);
  const Geometry g{S, nh, nh * DH};
  const int64_t rows = B * nh * S, tiles = (S + C::kRows - 1) / C::kRows;
  float* D = static_cast<float*>(ctx.scratch(kScratchDelta, rows * sizeof(float)));
  float* partial = static_cast<float*>(ctx.scratch(kScratchDrb, B * nh * tiles * cpu::kRelposBuckets * sizeof(float)));
  launch(attention_flash_backward_delta_kernel<DH>, grid_for(rows, 128), 128, 0, ctx.stream(),
         "attention_flash_backward_delta_kernel", D, dout, out, g, rows);
  const size_t dq_shared = dq_shared_floats<DH>() * sizeof(float), dkv_shared = dkv_shared_floats<DH>() * sizeof(float);
  allow_shared(attention_flash_backward_dq_kernel<DH>, dq_shared, "attention_flash_backward_dq_kernel");
  allow_shared(attention_flash_backward_dkv_kernel<DH>, dkv_shared, "attention_flash_backward_dkv_kernel");
  launch(attention_flash_backward_dq_kernel<DH>, row_grid<DH>(S, nh, B), C::kThreads, dq_shared, ctx.stream(),
         "attention_flash_backward_dq_kernel", dq, partial, dout, lse, D, q, k, v, rb, seg, t.of_distance.data(),
         t.lo.data(), t.hi.data(), g);
  launch(attention_flash_backward_dkv_kernel<DH>, row_grid<DH>(S, nh, B), C::kThreads, dkv_shared, ctx.stream(),
         "attention_flash_backward_dkv_kernel", dk, dv, dout, lse, D, q, k, v, rb, seg, t.of_distance.data(), g);
  reduce_drb(ctx, drb, partial, t, B, nh, tiles);
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
