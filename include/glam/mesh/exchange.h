// Moving dispatched rows to the ranks that hold their experts and back, over the
// data axis with MPI_Alltoallv (expert parallelism). The router's dispatched
// buffer is expert-major in global expert order, so the rows for one data rank
// are contiguous; a receiving rank regroups what it got from every source into
// its own expert-major order, runs its experts, and sends the results back the
// same way. Counts are exchanged first and buffers sized from them.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "glam/mesh/mesh.h"
#include "glam/model/moe.h"

namespace glam {

struct ExchangePlan {
  int64_t D = 1, E_local = 1;
  std::vector<int64_t> send_rows;     // [D] rows this rank sends to each data rank
  std::vector<int64_t> recv_counts;   // [D, E_local] rows from source s for local expert e
  std::vector<int64_t> recv_rows;     // [D] rows received from each source
  std::vector<int64_t> local_offsets; // [E_local + 1] rows of local expert e after regrouping
  int64_t n_recv() const { return local_offsets.empty() ? 0 : local_offsets.back(); }
  int64_t n_send() const;  // rows this rank dispatched
};

// Collective over the data axis: exchanges the per-expert counts of the plan.
ExchangePlan plan_exchange(const cpu::RoutingPlan& plan, const ExpertPlacement& place, const Mesh& mesh);

// dispatched [rows, M] (router order) -> expert_rows [n_recv, M] (local expert-major).
void send_to_experts(std::vector<float>& expert_rows, const std::vector<float>& dispatched,
                     const ExchangePlan& x, const Mesh& mesh, int64_t M);
// expert_rows [n_recv, M] -> dispatched [rows, M]: the inverse permutation.
void return_from_experts(std::vector<float>& dispatched, const std::vector<float>& expert_rows,
                         const ExchangePlan& x, const Mesh& mesh, int64_t M);

// The same into caller-owned host buffers; received / outgoing [n_recv, M] scratch.
// bf16_wire: the rows travel as bfloat16 (train.exchange_dtype = bf16).
void send_to_experts(float* expert_rows, const float* dispatched, float* received, const ExchangePlan& x,
                     const Mesh& mesh, int64_t M, bool bf16_wire = false);
void return_from_experts(float* dispatched, const float* expert_rows, float* outgoing, const ExchangePlan& x,
                         const Mesh& mesh, int64_t M, bool bf16_wire = false);

// The regrouping both directions use: received rows are [source][local expert],
// the experts' rows [local expert][source]; f(received_row, grouped_row, n) is
// called for each contiguous run (backends that move rows themselves use it).
void for_each_exchange_run(const ExchangePlan& x, const std::function<void(int64_t, int64_t, int64_t)>& f);

// train.exchange_chunks = k: the exchange as k smaller ones that overlap the experts.
// Chunk c of every (destination, expert) run of n dispatched rows is its rows
// [n c / k, n (c+1) / k), so each chunk is a valid exchange of its own and a
// receiver derives its chunk counts from the whole plan's (no more messages).
// Rows for the experts are chunk-major: [chunk][local expert][source]; the
// dispatched rows in flight are packed chunk-major too ([chunk][destination][expert]).
struct ChunkedExchange {
  int64_t k = 1;
  std::vector<ExchangePlan> chunk;       // [k] what each chunk sends and receives
  std::vector<int64_t> expert_first;     // [k + 1] chunk c's rows among the experts' [n_recv]
  std::vector<int64_t> packed_first;     // [k + 1] chunk c's rows among the packed dispatched [n_send]
  std::vector<int64_t> expert_offset;    // [E + 1] the router's runs of the dispatched rows
  std::vector<std::unique_ptr<AlltoallInFlight>> sends, returns;  // [k] in flight
};
ChunkedExchange plan_chunks(const ExchangePlan& whole, const cpu::RoutingPlan& plan, const ExpertPlacement& place,
                            int data_rank, int64_t k);
// First row of chunk c in a run of n rows.
inline int64_t chunk_start(int64_t n, int64_t c, int64_t k) { return n * c / k; }

// Host rows (the CPU backend). packed [n_send, M] and staged [n_recv, M] are the
// caller's scratch, untouched by anything else until every chunk has come back.
// start_send: packs chunk c of dispatched [rows, M] (router order) and starts it;
// finish_send: waits and regroups it into expert_rows [n_recv, M] (chunk-major).
// start_return: chunk c of expert_rows back; finish_return: waits and puts it
// into dispatched (router order). progress: lets MPI advance what is in flight.
void start_send_chunk(ChunkedExchange& cx, int64_t c, const float* dispatched, float* packed, float* staged,
                      const Mesh& mesh, int64_t M, bool bf16_wire);
void finish_send_chunk(ChunkedExchange& cx, int64_t c, float* expert_rows, const float* staged, int64_t M);
void start_return_chunk(ChunkedExchange& cx, int64_t c, const float* expert_rows, float* packed, float* staged,
                        const Mesh& mesh, int64_t M, bool bf16_wire);
void finish_return_chunk(ChunkedExchange& cx, int64_t c, float* dispatched, const float* packed, int64_t M);
void progress_chunks(ChunkedExchange& cx);

}  // namespace glam
