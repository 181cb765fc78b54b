// Expert-parallel exchange (see exchange.h). Every step here is either local
// reordering or one call into the mesh; nothing else talks to other ranks.
#include <cstring>

#include "glam/check.h"
#include "glam/exchange.h"

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

void send_to_experts(std::vector<float>& expert_rows, const std::vector<float>& dispatched,
                     const ExchangePlan& x, const Mesh& mesh, int64_t M) {
  std::vector<float> received(x.n_recv() * M);
  mesh.alltoallv_rows_data(dispatched.data(), x.send_rows, received.data(), x.recv_rows, M);
  expert_rows.resize(x.n_recv() * M);
  for_each_exchange_run(x, [&](int64_t from, int64_t to, int64_t n) {
    if (n) std::memcpy(expert_rows.data() + to * M, received.data() + from * M, sizeof(float) * n * M);
  });
}

void return_from_experts(std::vector<float>& dispatched, const std::vector<float>& expert_rows,
                         const ExchangePlan& x, const Mesh& mesh, int64_t M) {
  std::vector<float> outgoing(x.n_recv() * M);
  for_each_exchange_run(x, [&](int64_t to, int64_t from, int64_t n) {
    if (n) std::memcpy(outgoing.data() + to * M, expert_rows.data() + from * M, sizeof(float) * n * M);
  });
  int64_t rows = 0;
  for (int64_t r : x.send_rows) rows += r;
  dispatched.resize(rows * M);
  mesh.alltoallv_rows_data(outgoing.data(), x.recv_rows, dispatched.data(), x.send_rows, M);
}

}  // namespace glam
