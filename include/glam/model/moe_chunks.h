// The experts of one MoE layer with their all-to-all in chunks
// (train.exchange_chunks = k, ChunkedExchange in exchange.h): chunk c+1 travels
// while chunk c's experts compute, and chunk c's results go back while chunk c+1
// computes. Between experts the backend lets MPI advance what is in flight.
// Every row sees the same GEMMs as in the one-call exchange, so the outputs are the
// same; the weight gradients are summed in k parts (the order of fp32 sums).
// Expert rows (xin, pre, eh, xout and their gradients) are chunk-major.
#pragma once
#include <cstdint>

#include "glam/mesh/exchange.h"
#include "glam/model/backend.h"

namespace glam {

// eout [rows, M] (router order) = the experts of ein [rows, M]; xin, xout [n_recv, M],
// pre, eh [n_recv, H] written as experts_forward writes them; xout summed over model.
void experts_forward_chunked(Backend& be, ChunkedExchange& cx, Tensor eout, Tensor xin, Tensor pre, Tensor eh,
                             Tensor xout, const Tensor& ein, const Tensor& wi, const Tensor& wo, int64_t M,
                             int64_t H, cpu::Act act);

// dein [rows, M] (router order) = d ein from deout [rows, M]; dwi, dwo accumulate;
// dxout, dxin [n_recv, M] and dscratch [n_recv, H] are overwritten.
void experts_backward_chunked(Backend& be, ChunkedExchange& cx, Tensor dein, Tensor dwi, Tensor dwo, Tensor dxin,
                              Tensor dxout, Tensor dscratch, const Tensor& deout, const Tensor& xin,
                              const Tensor& pre, const Tensor& eh, const Tensor& wi, const Tensor& wo, int64_t M,
                              int64_t H, cpu::Act act);

}  // namespace glam
