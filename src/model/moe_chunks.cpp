// The experts of a MoE layer with their all-to-all in chunks (moe_chunks.h). Each
// loop turn: wait for chunk c, start chunk c+1, run chunk c's experts one at a
// time (MPI advances the chunks in flight between them), sum over model, start
// chunk c back. The returns are waited for at the end, in order.
#include "glam/model/moe_chunks.h"

namespace glam {

namespace {

// Offsets [E_local + 1] within a chunk that give only local expert e its rows.
std::vector<int64_t> only_expert(const std::vector<int64_t>& offsets, size_t e) {
  std::vector<int64_t> one(offsets.size());
  for (size_t j = 0; j < offsets.size(); j++) one[j] = j <= e ? offsets[e] : offsets[e + 1];
  return one;
}

}  // namespace

void experts_forward_chunked(Backend& be, ChunkedExchange& cx, Tensor eout, Tensor xin, Tensor pre, Tensor eh,
                             Tensor xout, const Tensor& ein, const Tensor& wi, const Tensor& wo, int64_t M,
                             int64_t H, cpu::Act act) {
  be.start_send_chunk(cx, 0, ein, M);
  for (int64_t c = 0; c < cx.k; c++) {
    be.finish_send_chunk(cx, c, xin, M);
    if (c + 1 < cx.k) be.start_send_chunk(cx, c + 1, ein, M);
    const int64_t r0 = cx.expert_first[c], n = cx.expert_first[c + 1] - r0;
    const std::vector<int64_t>& offsets = cx.chunk[c].local_offsets;  // [E_local + 1] within the chunk
    for (size_t e = 0; e + 1 < offsets.size(); e++) {
      if (offsets[e + 1] == offsets[e]) continue;
      be.experts_forward(xout.rows(r0, n), pre.rows(r0, n), eh.rows(r0, n), xin.rows(r0, n), wi, wo,
                         only_expert(offsets, e), M, H, act);
      be.progress_chunks(cx);
    }
    be.allreduce_sum_model(xout.rows(r0, n));  // hidden dim split over model
    be.start_return_chunk(cx, c, xout, M);
  }
  for (int64_t c = 0; c < cx.k; c++) be.finish_return_chunk(cx, c, eout, M);
}

void experts_backward_chunked(Backend& be, ChunkedExchange& cx, Tensor dein, Tensor dwi, Tensor dwo, Tensor dxin,
                              Tensor dxout, Tensor dscratch, const Tensor& deout, const Tensor& xin,
                              const Tensor& pre, const Tensor& eh, const Tensor& wi, const Tensor& wo, int64_t M,
                              int64_t H, cpu::Act act) {
  be.start_send_chunk(cx, 0, deout, M);
  for (int64_t c = 0; c < cx.k; c++) {
    be.finish_send_chunk(cx, c, dxout, M);
    if (c + 1 < cx.k) be.start_send_chunk(cx, c + 1, deout, M);
    const int64_t r0 = cx.expert_first[c], n = cx.expert_first[c + 1] - r0;
    const std::vector<int64_t>& offsets = cx.chunk[c].local_offsets;
    be.zero(dxin.rows(r0, n));
    for (size_t e = 0; e + 1 < offsets.size(); e++) {
      if (offsets[e + 1] == offsets[e]) continue;
      be.experts_backward(dxin.rows(r0, n), dwi, dwo, dscratch.rows(r0, n), dxout.rows(r0, n), xin.rows(r0, n),
                          pre.rows(r0, n), eh.rows(r0, n), wi, wo, only_expert(offsets, e), M, H, act);
      be.progress_chunks(cx);
    }
    be.allreduce_sum_model(dxin.rows(r0, n));
    be.start_return_chunk(cx, c, dxin, M);
  }
  for (int64_t c = 0; c < cx.k; c++) be.finish_return_chunk(cx, c, dein, M);
}

}  // namespace glam
