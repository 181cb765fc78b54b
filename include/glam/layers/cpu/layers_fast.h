// Fast CPU kernels: the same contracts, names and argument order as the readable
// reference in layers.h (outputs, then inputs, then sizes; backward accumulates),
// in namespace glam::cpu::fast. They differ only in how they compute: vectorised
// exp/tanh (src/layers/cpu/fastmath.h) instead of libm, one tanh per element in GEGLU's
// backward, loops over the unmasked keys only, OpenMP over rows, no zeroed
// scratch. Results agree with the reference to float rounding
// (tests/test_fast_kernels.cpp).
// The model picks one set through Kernels (reference for the tests that want the
// oracle, fast for training).
#pragma once
#include <cstdint>

#include "glam/layers/cpu/layers.h"
#include "glam/model/moe.h"

namespace glam::cpu::fast {

// ---- fast_activations.cpp: GEGLU ---------------------------------------------------
void geglu_forward(float* h, const float* a0, const float* a1, int64_t n);
void geglu_backward(float* da0, float* da1, const float* dh, const float* a0, const float* a1, int64_t n);

// ---- fast_loss.cpp ----------------------------------------------------------------
LossSums softmax_xent_forward(float* lse, const float* logits, const int32_t* targets, int64_t T,
                              int64_t Vl, int64_t v0, const Mesh& mesh);
void softmax_xent_backward(float* dlogits, const float* logits, const float* lse,
                           const int32_t* targets, int64_t T, int64_t Vl, int64_t v0,
                           float ce_scale, float z_scale);

// ---- fast_attention.cpp -------------------------------------------------------------
void attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                       const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                       int64_t dh);
void attention_backward(float* dq, float* dk, float* dv, float* drb, const float* dout,
                        const float* stats, const float* q, const float* k, const float* v,
                        const float* rb, const int32_t* segments, int64_t B, int64_t S, int64_t nh,
                        int64_t dh);

// ---- fast_experts.cpp ---------------------------------------------------------------
void experts_forward(float* y, float* pre, float* h, const float* x, const float* wi,
                     const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                     Act act, Precision p = Precision::fp32);
void experts_backward(float* dx, float* dwi, float* dwo, float* dh_scratch, const float* dy,
                      const float* x, const float* pre, const float* h, const float* wi,
                      const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                      Act act, Precision p = Precision::fp32);

}  // namespace glam::cpu::fast

namespace glam::cpu {

// The kernels the model calls where a fast version exists.
struct Kernels {
  decltype(&cpu::geglu_forward) geglu_forward;
  decltype(&cpu::geglu_backward) geglu_backward;
  decltype(&cpu::softmax_xent_forward) softmax_xent_forward;
  decltype(&cpu::softmax_xent_backward) softmax_xent_backward;
  decltype(&cpu::attention_forward) attention_forward;
  decltype(&cpu::attention_backward) attention_backward;
  decltype(&cpu::experts_forward) experts_forward;
  decltype(&cpu::experts_backward) experts_backward;

  static Kernels reference() {
    return {cpu::geglu_forward, cpu::geglu_backward,
            cpu::softmax_xent_forward, cpu::softmax_xent_backward, cpu::attention_forward,
            cpu::attention_backward, cpu::experts_forward, cpu::experts_backward};
  }
  static Kernels fast() {
    return {fast::geglu_forward, fast::geglu_backward,
            fast::softmax_xent_forward, fast::softmax_xent_backward, fast::attention_forward,
            fast::attention_backward, fast::experts_forward, fast::experts_backward};
  }
};

}  // namespace glam::cpu
