// Expert-parallel exchange (see exchange.h). Every step here is either local
// reordering or one call into the mesh; nothing else talks to other ranks.
#include <cstring>

#include "glam/base/check.h"
#include "glam/mesh/exchange.h"

namespace glam {

namespace {

// recv_rows and local_offsets from recv_counts.
void fill_receiving(ExchangePlan& x) {
  x.recv_rows.assign(x.D, 0);
  x.local_offsets.assign(x.E_local + 1, 0);
  for (int64_t s = 0; s < x.D; s++)
    for (int64_t e = 0; e < x.E_local; e++) {
      x.recv_rows[s] += x.recv_counts[s * x.E_local + e];
      x.local_offsets[e + 1] += x.recv_counts[s * x.E_local + e];
    }
  for (int64_t e = 0; e < x.E_local; e++) x.local_offsets[e + 1] += x.local_offsets[e];
}

}  // namespace

ExchangePlan plan_exchange(const cpu::RoutingPlan& plan, const ExpertPlacement& place, const Mesh& mesh) {
  ExchangePlan x;
  x.D = mesh.data_size;
  x.E_local = place.local;
  std::vector<int64_t> send_counts(x.D * x.E_local, 0);  // [D, E_local] rows for (dest, its local expert)
  x.send_rows.assign(x.D, 0);
  for (int64_t e = 0; e < place.n_experts; e++) {
    const int64_t n = plan.expert_offset[e + 1] - plan.expert_offset[e];
    const int dest = place.owner(e, mesh.data_rank);
    send_counts[dest * x.E_local + e % x.E_local] += n;
    x.send_rows[dest] += n;
  }
  mesh.alltoall_counts_data(send_counts, x.recv_counts, x.E_local);
  fill_receiving(x);
  return x;
}

// Received order is [source][local expert]; the experts want [local expert][source].
void for_each_exchange_run(const ExchangePlan& x, const std::function<void(int64_t, int64_t, int64_t)>& f) {
  std::vector<int64_t> fill(x.local_offsets.begin(), x.local_offsets.end() - 1);
  int64_t received = 0;
  for (int64_t s = 0; s < x.D; s++)
    for (int64_t e = 0; e < x.E_local; e++) {
      const int64_t n = x.recv_counts[s * x.E_local + e];
      f(received, fill[e], n);
      received += n;
      fill[e] += n;
    }
}

void send_to_experts(float* expert_rows, const float* dispatched, float* received, const ExchangePlan& x,
                     const Mesh& mesh, int64_t M, bool bf16_wire) {
  if (bf16_wire) mesh.alltoallv_rows_data_bf16(dispatched, x.send_rows, received, x.recv_rows, M);
  else mesh.alltoallv_rows_data(dispatched, x.send_rows, received, x.recv_rows, M);
  for_each_exchange_run(x, [&](int64_t from, int64_t to, int64_t n) {
    if (n) std::memcpy(expert_rows + to * M, received + from * M, sizeof(float) * n * M);
  });
}

void return_from_experts(float* dispatched, const float* expert_rows, float* outgoing, const ExchangePlan& x,
                         const Mesh& mesh, int64_t M, bool bf16_wire) {
  for_each_exchange_run(x, [&](int64_t to, int64_t from, int64_t n) {
    if (n) std::memcpy(outgoing + to * M, expert_rows + from * M, sizeof(float) * n * M);
  });
  if (bf16_wire) mesh.alltoallv_rows_data_bf16(outgoing, x.recv_rows, dispatched, x.send_rows, M);
  else mesh.alltoallv_rows_data(outgoing, x.recv_rows, dispatched, x.send_rows, M);
}

int64_t ExchangePlan::n_send() const {
  int64_t rows = 0;
  for (int64_t r : send_rows) rows += r;
  return rows;
}

void send_to_experts(std::vector<float>& expert_rows, const std::vector<float>& dispatched,
                     const ExchangePlan& x, const Mesh& mesh, int64_t M) {
  std::vector<float> received(x.n_recv() * M);
  expert_rows.resize(x.n_recv() * M);
  send_to_experts(expert_rows.data(), dispatched.data(), received.data(), x, mesh, M);
}

void return_from_experts(std::vector<float>& dispatched, const std::vector<float>& expert_rows,
                         const ExchangePlan& x, const Mesh& mesh, int64_t M) {
  std::vector<float> outgoing(x.n_recv() * M);
  dispatched.resize(x.n_send() * M);
  return_from_experts(dispatched.data(), expert_rows.data(), outgoing.data(), x, mesh, M);
}

// ---- in chunks (train.exchange_chunks) ----------------------------------------

ChunkedExchange plan_chunks(const ExchangePlan& whole, const cpu::RoutingPlan& plan, const ExpertPlacement& place,
                            int data_rank, int64_t k) {
  ChunkedExchange cx;
  cx.k = k;
  cx.expert_offset = plan.expert_offset;
  cx.chunk.resize(k);
  cx.expert_first.assign(k + 1, 0);
  cx.packed_first.assign(k + 1, 0);
  auto rows_of = [k](int64_t n, int64_t c) { return chunk_start(n, c + 1, k) - chunk_start(n, c, k); };
  for (int64_t c = 0; c < k; c++) {
    ExchangePlan& x = cx.chunk[c];
    x.D = whole.D;
    x.E_local = whole.E_local;
    x.send_rows.assign(x.D, 0);
    for (int64_t e = 0; e < place.n_experts; e++)
      x.send_rows[place.owner(e, data_rank)] += rows_of(plan.expert_offset[e + 1] - plan.expert_offset[e], c);
    x.recv_counts.resize(whole.recv_counts.size());
    for (size_t i = 0; i < x.recv_counts.size(); i++) x.recv_counts[i] = rows_of(whole.recv_counts[i], c);
    fill_receiving(x);
    cx.expert_first[c + 1] = cx.expert_first[c] + x.n_recv();
    cx.packed_first[c + 1] = cx.packed_first[c] + x.n_send();
    cx.sends.push_back(std::make_unique<AlltoallInFlight>());
    cx.returns.push_back(std::make_unique<AlltoallInFlight>());
  }
  return cx;
}

namespace {

// Chunk c of each expert's run of the dispatched rows, in expert order (which is
// destination order: an expert's owner grows with its index).
template <typename F>
void for_each_chunk_run(const ChunkedExchange& cx, int64_t c, F f) {
  int64_t packed = cx.packed_first[c];
  for (size_t e = 0; e + 1 < cx.expert_offset.size(); e++) {
    const int64_t n = cx.expert_offset[e + 1] - cx.expert_offset[e];
    const int64_t first = chunk_start(n, c, cx.k), rows = chunk_start(n, c + 1, cx.k) - first;
    f(cx.expert_offset[e] + first, packed, rows);  // (dispatched row, packed row, rows)
    packed += rows;
  }
}

}  // namespace

void start_send_chunk(ChunkedExchange& cx, int64_t c, const float* dispatched, float* packed, float* staged,
                      const Mesh& mesh, int64_t M, bool bf16_wire) {
  for_each_chunk_run(cx, c, [&](int64_t from, int64_t to, int64_t n) {
    if (n) std::memcpy(packed + to * M, dispatched + from * M, sizeof(float) * n * M);
  });
  const ExchangePlan& x = cx.chunk[c];
  mesh.start_alltoallv_rows_data(packed + cx.packed_first[c] * M, x.send_rows, staged + cx.expert_first[c] * M,
                                 x.recv_rows, M, bf16_wire, *cx.sends[c]);
}

void finish_send_chunk(ChunkedExchange& cx, int64_t c, float* expert_rows, const float* staged, int64_t M) {
  cx.sends[c]->wait();
  float* rows = expert_rows + cx.expert_first[c] * M;
  const float* got = staged + cx.expert_first[c] * M;
  for_each_exchange_run(cx.chunk[c], [&](int64_t from, int64_t to, int64_t n) {
    if (n) std::memcpy(rows + to * M, got + from * M, sizeof(float) * n * M);
  });
}

void start_return_chunk(ChunkedExchange& cx, int64_t c, const float* expert_rows, float* packed, float* staged,
                        const Mesh& mesh, int64_t M, bool bf16_wire) {
  const float* rows = expert_rows + cx.expert_first[c] * M;
  float* out = staged + cx.expert_first[c] * M;  // chunk c's received rows are regrouped already: free
  for_each_exchange_run(cx.chunk[c], [&](int64_t to, int64_t from, int64_t n) {
    if (n) std::memcpy(out + to * M, rows + from * M, sizeof(float) * n * M);
  });
  const ExchangePlan& x = cx.chunk[c];
  mesh.start_alltoallv_rows_data(out, x.recv_rows, packed + cx.packed_first[c] * M, x.send_rows, M, bf16_wire,
                                 *cx.returns[c]);
}

void finish_return_chunk(ChunkedExchange& cx, int64_t c, float* dispatched, const float* packed, int64_t M) {
  cx.returns[c]->wait();
  for_each_chunk_run(cx, c, [&](int64_t to, int64_t from, int64_t n) {
    if (n) std::memcpy(dispatched + to * M, packed + from * M, sizeof(float) * n * M);
  });
}

void progress_chunks(ChunkedExchange& cx) {
  for (auto& x : cx.sends) x->done();
  for (auto& x : cx.returns) x->done();
}

}  // namespace glam
