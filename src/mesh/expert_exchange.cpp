// Expert-parallel exchange (see exchange.h). Every step here is either local
// reordering or one call into the mesh; nothing else talks to other ranks.
#include <cstring>

#include "glam/base/check.h"
#include "glam/mesh/exchange.h"

namespace glam {

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
  x.recv_rows.assign(x.D, 0);
  x.local_offsets.assign(x.E_local + 1, 0);
  for (int64_t s = 0; s < x.D; s++)
    for (int64_t e = 0; e < x.E_local; e++) {
      x.recv_rows[s] += x.recv_counts[s * x.E_local + e];
      x.local_offsets[e + 1] += x.recv_counts[s * x.E_local + e];
    }
  for (int64_t e = 0; e < x.E_local; e++) x.local_offsets[e + 1] += x.local_offsets[e];
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

}  // namespace glam
