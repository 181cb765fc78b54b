// The experts: plain two-matrix FFNs act(x Wi_e) Wo_e (not gated), one GEMM pair
// per expert over its contiguous rows of the dispatched buffer.
// wi [E, M, H], wo [E, H, M]; pre, h [rows, H]; x, y [rows, M].
#include "glam/model/moe.h"

namespace glam::cpu {

void experts_forward(float* y, float* pre, float* h, const float* x, const float* wi,
                     const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                     Act act, Precision p) {
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    matmul_forward(pre + r0 * H, x + r0 * M, wi + e * M * H, n, M, H, p);
    act_forward(h + r0 * H, pre + r0 * H, n * H, act);
    matmul_forward(y + r0 * M, h + r0 * H, wo + e * H * M, n, H, M, p);
  }
}

// dh_scratch [rows, H] is overwritten.
void experts_backward(float* dx, float* dwi, float* dwo, float* dh_scratch, const float* dy,
                      const float* x, const float* pre, const float* h, const float* wi,
                      const float* wo, const std::vector<int64_t>& offsets, int64_t M, int64_t H,
                      Act act, Precision p) {
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t rows = offsets[E];
  for (int64_t i = 0; i < rows * H; i++) dh_scratch[i] = 0.0f;
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    float* dh = dh_scratch + r0 * H;
    matmul_backward(dh, dwo + e * H * M, dy + r0 * M, h + r0 * H, wo + e * H * M, n, H, M, p);
    // d pre = act'(pre) * dh, computed in place: act_backward accumulates into a zeroed copy
    std::vector<float> dpre(n * H, 0.0f);
    act_backward(dpre.data(), dh, pre + r0 * H, n * H, act);
    matmul_backward(dx + r0 * M, dwi + e * M * H, dpre.data(), x + r0 * M, wi + e * M * H, n, M, H, p);
  }
}

}  // namespace glam::cpu
