// The tied table Emb [V, M]: token lookup at the input (not scaled by sqrt(M)) and
// the output layer logits = (h * M^-1/2) @ Emb^T.
// The table may be sharded over the vocabulary (model axis): this rank holds rows
// [row0, row0 + rows); ids outside the shard contribute zeros, and the mesh sums
// the partial outputs over the model axis.
#include <cblas.h>

#include <cstring>

#include "glam/layers/cpu/layers.h"

namespace glam::cpu {

void embedding_forward(float* out, const int32_t* ids, const float* emb, int64_t T, int64_t M,
                       int64_t row0, int64_t rows) {
  for (int64_t t = 0; t < T; t++) {
    int64_t r = ids[t] - row0;
    float* o = out + t * M;
    if (r >= 0 && r < rows) std::memcpy(o, emb + r * M, sizeof(float) * M);
    else std::memset(o, 0, sizeof(float) * M);
  }
}

void embedding_backward(float* demb, const float* dout, const int32_t* ids, int64_t T, int64_t M,
                        int64_t row0, int64_t rows) {
  for (int64_t t = 0; t < T; t++) {
    int64_t r = ids[t] - row0;
    if (r < 0 || r >= rows) continue;
    float* d = demb + r * M;
    const float* g = dout + t * M;
    for (int64_t i = 0; i < M; i++) d[i] += g[i];
  }
}

void logits_forward(float* logits, const float* h, const float* emb, int64_t T, int64_t M,
                    int64_t Vl, float scale, Precision p) {
  gemm(p, false, true, T, Vl, M, scale, h, M, emb, M, 0.0f, logits, Vl);
}

void logits_backward(float* dh, float* demb, const float* dlogits, const float* h, const float* emb,
                     int64_t T, int64_t M, int64_t Vl, float scale, Precision p) {
  // dh[T,M] += scale * dlogits @ emb ; demb[Vl,M] += scale * dlogits^T @ h
  gemm(p, false, false, T, M, Vl, scale, dlogits, Vl, emb, M, 1.0f, dh, M);
  gemm(p, true, false, Vl, M, T, scale, dlogits, Vl, h, M, 1.0f, demb, M);
}

}  // namespace glam::cpu
