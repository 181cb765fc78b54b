// CUDA layers of GLaM: the GPU counterpart of glam::cpu (include/glam/layers/cpu/layers.h),
// checked against it by tests/cuda. Only built when CMake finds nvcc.
//
// Precision (docs/GPU.md): GEMM operands in bf16 with fp32
// accumulation and fp32 results; the residual stream, norm statistics, attention
// and gating softmax, and the output log-softmax in fp32. A layer whose output
// feeds a GEMM writes it in bf16 (rmsnorm, geglu, the expert activation).
//
// Conventions as on the CPU: outputs, then inputs, then sizes; forward
// overwrites, backward ACCUMULATES into gradients; row-major tensors; every
// pointer is device memory unless named host_*. All work is queued on the
// context's stream; the functions returning host values synchronise it.
// Every kernel is deterministic: no atomics on floats, fixed reduction orders.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "glam/layers/cuda/check.h"
#include "glam/layers/cpu/layers.h"
#include "glam/model/moe.h"

namespace glam { struct Mesh; }

namespace glam::cuda {

using bf16 = __nv_bfloat16;

// The most blocks a 1-D kernel is launched with (65535 by default). Every such
// kernel strides over its elements or rows by the grid, so any cap covers them
// all; the tests lower it to check that.
int max_grid_blocks();
void set_max_grid_blocks(int blocks);

struct BucketTables;  // src/layers/cuda/buckets.cuh

// What the layers keep from call to call in a Context's scratch (one slot each).
enum ScratchSlot : int { kScratchDelta, kScratchDrb, kScratchLossMax, kScratchLossSum, kScratchLossTarget,
                         kScratchLossTotals, kScratchSquares, kScratchSlots };

// The stream and cuBLAS handle every layer runs on, and what the layers reuse:
// after the first call with a shape, the attention layers, the loss and
// gradient_norm allocate nothing (and the attention layers do not synchronise).
class Context {
 public:
  Context();
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  void sync() const;
  // Device memory of at least `bytes` for `slot`, kept (grown, never shrunk) until
  // the context goes: work queued on the stream uses it in order.
  void* scratch(ScratchSlot slot, size_t bytes) const;
  // The relative-position tables for rows of S tokens, built on first use.
  const BucketTables& buckets(int64_t S) const;
 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  mutable std::pair<void*, size_t> scratch_[kScratchSlots] = {};
  mutable std::map<int64_t, std::unique_ptr<BucketTables>> buckets_;
};

// A device allocation of n elements of T, freed with it.
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) { resize(n); }
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) { release(); ptr_ = o.ptr_; n_ = o.n_; o.ptr_ = nullptr; o.n_ = 0; }
    return *this;
  }
  void resize(size_t n) {
    release();
    if (n) GLAM_CHECK_CUDA(cudaMalloc(&ptr_, n * sizeof(T)));
    n_ = n;
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    if (host.size() != n_) resize(host.size());
    if (n_) GLAM_CHECK_CUDA(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_) GLAM_CHECK_CUDA(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
 private:
  void release() { if (ptr_) GLAM_WARN_CUDA(cudaFree(ptr_)); ptr_ = nullptr; n_ = 0; }
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// ---- gemm.cu: bf16 <-> fp32 conversions ----------------------------------------
void to_bf16(const Context& ctx, bf16* out, const float* in, int64_t n);
void to_f32(const Context& ctx, float* out, const bf16* in, int64_t n);

// ---- gemm.cu: cuBLAS, bf16 operands, fp32 accumulation and result -------------
// Row-major C[m, n] = alpha * op(A) op(B) + beta * C, op(A) [m, k], op(B) [k, n].
void gemm(const Context& ctx, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta,
          float* C, int64_t ldc);
// out[T, N] = in[T, K] @ w[K, N]
void matmul_forward(const Context& ctx, float* out, const bf16* in, const bf16* w, int64_t T,
                    int64_t K, int64_t N);
// din[T, K] += dout @ w^T ; dw[K, N] += in^T @ dout (either may be null)
void matmul_backward(const Context& ctx, float* din, float* dw, const bf16* dout, const bf16* in,
                     const bf16* w, int64_t T, int64_t K, int64_t N);

// fp32 GEMM (cublasSgemm, no TF32) for the router, which runs in fp32 throughout.
void gemm_f32(const Context& ctx, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
              float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
              float* C, int64_t ldc);
// y[n] += x[n]
void add_into(const Context& ctx, float* y, const float* x, int64_t n);

// ---- embedding.cu: lookup over a vocabulary shard, and the tied output layer ------
void embedding_forward(const Context& ctx, float* out, const int32_t* ids, const float* emb, int64_t T,
                       int64_t M, int64_t row0, int64_t rows);
void embedding_backward(const Context& ctx, float* demb, const float* dout, const int32_t* ids,
                        int64_t T, int64_t M, int64_t row0, int64_t rows);
// logits[T, Vl] = scale * h[T, M] @ emb[Vl, M]^T (bf16 operands, fp32 logits)
void logits_forward(const Context& ctx, float* logits, const bf16* h, const bf16* emb, int64_t T,
                    int64_t M, int64_t Vl, float scale);
// dh[T, M] += scale * dlogits @ emb ; demb[Vl, M] += scale * dlogits^T @ h
void logits_backward(const Context& ctx, float* dh, float* demb, const bf16* dlogits, const bf16* h,
                     const bf16* emb, int64_t T, int64_t M, int64_t Vl, float scale);

// ---- norm_act.cu ----------------------------------------------------------------
// out32 (optional, may be null): the same output in fp32, for the fp32 router.
void rmsnorm_forward(const Context& ctx, bf16* out, float* rstd, const float* x, const float* g,
                     int64_t T, int64_t M, float* out32 = nullptr);
void rmsnorm_backward(const Context& ctx, float* dx, float* dg, const float* dout, const float* x,
                      const float* g, const float* rstd, int64_t T, int64_t M);
void geglu_forward(const Context& ctx, bf16* h, const float* a0, const float* a1, int64_t n);
void geglu_backward(const Context& ctx, float* da0, float* da1, const float* dh, const float* a0,
                    const float* a1, int64_t n);
void act_forward(const Context& ctx, bf16* y, const float* x, int64_t n, cpu::Act act);
void act_backward(const Context& ctx, float* dx, const float* dy, const float* x, int64_t n,
                  cpu::Act act);

// ---- attention.cu: the CPU's attention (relative bias, zero logit, segments) ----
// q, k, v, out [B, S, nh, dh] fp32; rb [nh, 32]; segments [B, S]; probs [B, nh, S, S].
void attention_forward(const Context& ctx, float* out, float* probs, const float* q, const float* k,
                       const float* v, const float* rb, const int32_t* segments, int64_t B,
                       int64_t S, int64_t nh, int64_t dh);
// dA_scratch [B, nh, S, S].
void attention_backward(const Context& ctx, float* dq, float* dk, float* dv, float* drb,
                        float* dA_scratch, const float* dout, const float* probs, const float* q,
                        const float* k, const float* v, const int32_t* segments, int64_t B,
                        int64_t S, int64_t nh, int64_t dh);

// ---- flash_attention.cu: the same attention, fused, without the probabilities ------
// lse [B, nh, S]: log of each query's softmax denominator (zero logit included),
// all the backward keeps. d_head 16, 32, 64 or 128.
bool flash_attention_supports(int64_t dh);
void attention_flash_forward(const Context& ctx, float* out, float* lse, const float* q, const float* k,
                             const float* v, const float* rb, const int32_t* segments, int64_t B, int64_t S,
                             int64_t nh, int64_t dh);
void attention_flash_backward(const Context& ctx, float* dq, float* dk, float* dv, float* drb, const float* dout,
                              const float* out, const float* lse, const float* q, const float* k, const float* v,
                              const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                              int64_t dh);

// ---- loss.cu: softmax cross-entropy with z-loss over a vocabulary shard ----------
// As cpu::softmax_xent_forward, on the device. reduce_model(rows, n, max) reduces
// n floats on the device over the model axis (max or sum); empty on one model rank.
// The host waits once, for the three sums.
using ReduceModelRows = std::function<void(float* rows, int64_t n, bool max)>;
cpu::LossSums softmax_xent_forward(const Context& ctx, float* lse, const float* logits,
                                   const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                                   const ReduceModelRows& reduce_model);
void softmax_xent_backward(const Context& ctx, float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale);

// ---- router.cu: GShard top-2 gating with capacity, in the CPU's exact order -------
// The decisions and the bookkeeping: glam/layers/cuda/routing.h (router_decide, routing.cu).

// ---- router.cu, routing.cu: the permutation into expert rows and its inverse -------
void dispatch_forward(const Context& ctx, bf16* expert_in, const bf16* x, const int32_t* row,
                      int64_t T, int64_t M);
void dispatch_backward(const Context& ctx, float* dx, const float* dexpert_in, const int32_t* row,
                       int64_t T, int64_t M);
// out[T, M] = sum_k weight[t,k] * expert_out[row[t,k]], weight = kept ? g : 0
void combine_forward(const Context& ctx, float* out, const float* expert_out, const int32_t* row,
                     const float* g, const uint8_t* kept, int64_t T, int64_t M);
// dexpert_out [rows, M] overwritten; dweight [T, 2] overwritten.
void combine_backward(const Context& ctx, float* dexpert_out, float* dweight, const float* dout,
                      const float* expert_out, const int32_t* row, const float* g,
                      const uint8_t* kept, int64_t T, int64_t M, int64_t rows);

}  // namespace glam::cuda
