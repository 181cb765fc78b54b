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

// The pipeline both directions share: chunk c+1 travels while chunk c's experts
// run one at a time (expert(c, r0, n, offsets of one expert) computes into `back`),
// then chunk c's rows of back are summed over model and start their way back.
template <class Expert>
void pipeline(Backend& be, ChunkedExchange& cx, const Tensor& send, Tensor recv, Tensor back, Tensor returned,
              int64_t M, Expert expert) {
  be.start_send_chunk(cx, 0, send, M);
  for (int64_t c = 0; c < cx.k; c++) {
    be.finish_send_chunk(cx, c, recv, M);
    if (c + 1 < cx.k) be.start_send_chunk(cx, c + 1, send, M);
    const int64_t r0 = cx.expert_first[c], n = cx.expert_first[c + 1] - r0;
    const std::vector<int64_t>& offsets = cx.chunk[c].local_offsets;  // [E_local + 1] within the chunk
    for (size_t e = 0; e + 1 < offsets.size(); e++) {
      if (offsets[e + 1] == offsets[e]) continue;
      expert(r0, n, only_expert(offsets, e));
      be.progress_chunks(cx);
    }
    be.allreduce_sum_model(back.rows(r0, n));  // hidden dim split over model
    be.start_return_chunk(cx, c, back, M);
  }
  for (int64_t c = 0; c < cx.k; c++) be.finish_return_chunk(cx, c, returned, M);
}

}  // namespace

void experts_forward_chunked(Backend& be, ChunkedExchange& cx, Tensor eout, Tensor xin, Tensor pre, Tensor eh,
                             Tensor xout, const Tensor& ein, const Tensor& wi, const Tensor& wo, int64_t M,
                             int64_t H, cpu::Act act) {
  pipeline(be, cx, ein, xin, xout, eout, M, [&](int64_t r0, int64_t n, const std::vector<int64_t>& one) {
    be.experts_forward(xout.rows(r0, n), pre.rows(r0, n), eh.rows(r0, n), xin.rows(r0, n), wi, wo, one, M, H, act);
  });
}

void experts_backward_chunked(Backend& be, ChunkedExchange& cx, Tensor dein, Tensor dwi, Tensor dwo, Tensor dxin,
                              Tensor dxout, Tensor dscratch, const Tensor& deout, const Tensor& xin,
                              const Tensor& pre, const Tensor& eh, const Tensor& wi, const Tensor& wo, int64_t M,
                              int64_t H, cpu::Act act) {
  be.zero(dxin.rows(0, cx.expert_first[cx.k]));  // the experts add their rows' input gradients
  pipeline(be, cx, deout, dxout, dxin, dein, M, [&](int64_t r0, int64_t n, const std::vector<int64_t>& one) {
    be.experts_backward(dxin.rows(r0, n), dwi, dwo, dscratch.rows(r0, n), dxout.rows(r0, n), xin.rows(r0, n),
                        pre.rows(r0, n), eh.rows(r0, n), wi, wo, one, M, H, act);
  });
}

}  // namespace glam
