// The data x model mesh over MPI. Ranks of one model group are consecutive in
// MPI_COMM_WORLD (row-major Cartesian layout, model the fast axis), so a model
// group stays inside a node when ranks are placed node by node.
#include "glam/mesh/mesh.h"

#include <chrono>
#include <cstdio>
#include <cstring>

#include "glam/base/check.h"
#include "glam/base/cli.h"
#include "glam/layers/cpu/gemm.h"

namespace glam {

namespace {

void parse_shape(const std::string& shape, int world, int* D, int* M) {
  if (shape.empty()) { *D = world; *M = 1; return; }
  int d = 0, m = 0;
  parse_mesh(shape, "--mesh", &d, &m);  // strict DxM (cli.h)
  GLAM_REQUIRE(d * m == world, "--mesh ", shape, " has ", d * m, " cells but ", world,
               " MPI ranks were started; use mpirun -np ", d * m);
  *D = d; *M = m;
}

// Adds the wall time of one MPI call to the mesh's statistics.
// `also`: a second counter the same time goes to (CommStats::alltoall_seconds).
class CommTimer {
 public:
  explicit CommTimer(CommStats& s, double* also = nullptr)
      : stats_(s), also_(also), t0_(std::chrono::steady_clock::now()) {}
  ~CommTimer() {
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    stats_.seconds += t;
    if (also_) *also_ += t;
  }
 private:
  CommStats& stats_;
  double* also_;
  std::chrono::steady_clock::time_point t0_;
};

int to_int(int64_t v) { return static_cast<int>(v); }

float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// MPI_Op for bf16 sums: each partial sum in fp32, rounded back to bf16.
void sum_bf16(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; i++) {
    const float s = from_bf16(a[i]) + from_bf16(b[i]);
    cpu::to_bf16(&b[i], &s, 1);
  }
}

}  // namespace

Mesh Mesh::create(const std::string& shape) {
  Mesh mesh;
  GLAM_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &mesh.world_size));
  parse_shape(shape, mesh.world_size, &mesh.data_size, &mesh.model_size);
  int dims[2] = {mesh.data_size, mesh.model_size}, periods[2] = {0, 0};
  GLAM_CHECK_MPI(MPI_Cart_create(MPI_COMM_WORLD, 2, dims, periods, 0, &mesh.world));
  GLAM_CHECK_MPI(MPI_Comm_rank(mesh.world, &mesh.world_rank));
  int coords[2];
  GLAM_CHECK_MPI(MPI_Cart_coords(mesh.world, mesh.world_rank, 2, coords));
  mesh.data_rank = coords[0];
  mesh.model_rank = coords[1];
  int keep_data[2] = {1, 0}, keep_model[2] = {0, 1};
  GLAM_CHECK_MPI(MPI_Cart_sub(mesh.world, keep_data, &mesh.data_comm));
  GLAM_CHECK_MPI(MPI_Cart_sub(mesh.world, keep_model, &mesh.model_comm));
  return mesh;
}

Mesh Mesh::single() {
  Mesh mesh;
  mesh.world = mesh.data_comm = mesh.model_comm = MPI_COMM_SELF;
  return mesh;
}

h5::Plist Mesh::mpio_file_access() const { return h5::mpio_file_access(world); }

void Mesh::allreduce_sum(float* buf, int64_t n, MPI_Comm comm) const {
  int size = 1;
  GLAM_CHECK_MPI(MPI_Comm_size(comm, &size));
  if (size == 1 || n == 0) return;
  CommTimer timer(stats);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(float));
  if (comm == model_comm) stats.allreduce_model_bytes += bytes;
  else if (comm == data_comm) stats.allreduce_data_bytes += bytes;
  else stats.allreduce_other_bytes += bytes;
  stats.allreduce_calls++;
  for (int64_t done = 0; done < n; done += count_limit) {  // chunks keep each count an int
    const int64_t part = std::min<int64_t>(count_limit, n - done);
    GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + done, to_int(part), MPI_FLOAT, MPI_SUM, comm));
  }
}

void Mesh::allreduce_sum_model(float* buf, int64_t n) const {
  if (model_size > 1) allreduce_sum(buf, n, model_comm);
}

void Mesh::allreduce_small(void* buf, int64_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm) const {
  CommTimer timer(stats);
  stats.allreduce_calls++;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, to_int(n), type, op, comm));
}

void Mesh::allreduce_sum_model(double* buf, int64_t n) const {
  if (model_size > 1) allreduce_small(buf, n, MPI_DOUBLE, MPI_SUM, model_comm);
}

void Mesh::allreduce_max_model(float* buf, int64_t n) const {
  if (model_size > 1) allreduce_small(buf, n, MPI_FLOAT, MPI_MAX, model_comm);
}

void Mesh::allreduce_sum_data(float* buf, int64_t n) const {
  if (data_size > 1) allreduce_sum(buf, n, data_comm);
}

void Mesh::allreduce_sum_data(double* buf, int64_t n) const {
  if (data_size > 1) allreduce_small(buf, n, MPI_DOUBLE, MPI_SUM, data_comm);
}

void Mesh::allreduce_sum_world(double* buf, int64_t n) const {
  if (world_size > 1) allreduce_small(buf, n, MPI_DOUBLE, MPI_SUM, world);
}

void Mesh::allgather_model(const float* in, int64_t n, float* out) const {
  if (model_size == 1) { std::memcpy(out, in, sizeof(float) * n); return; }
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Allgather(in, to_int(n), MPI_FLOAT, out, to_int(n), MPI_FLOAT, model_comm));
}

void Mesh::broadcast_world(int32_t* buf, int64_t n) const {
  if (world_size == 1) return;
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Bcast(buf, to_int(n), MPI_INT32_T, 0, world));
}

void Mesh::allreduce_sum_world(float* buf, int64_t n) const {
  if (world_size > 1) allreduce_sum(buf, n, world);
}

void Mesh::allreduce_sum_replicas(float* buf, int64_t n, const ExpertPlacement& place) const {
  if (place.replicas > 1) allreduce_sum(buf, n, place.replica_comm);
}

double Mesh::max_world(double v) const {
  if (world_size == 1) return v;
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, world));
  return v;
}

uint64_t Mesh::sum_world(uint64_t v) const {
  if (world_size == 1) return v;
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_UINT64_T, MPI_SUM, world));
  return v;
}

// One flag over the mesh: MPI_MIN asks whether every rank says true, MPI_MAX any.
bool Mesh::reduce_flag(bool flag, MPI_Op op) const {
  if (world_size == 1) return flag;
  int v = flag ? 1 : 0;
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, op, world));
  return v != 0;
}

bool Mesh::all(bool flag) const { return reduce_flag(flag, MPI_MIN); }

void Mesh::barrier() const {
  if (world_size == 1) return;
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Barrier(world));
}

Mesh::NodeRanks Mesh::node_ranks() const {
  NodeRanks node;
  if (world_size == 1 || world == MPI_COMM_NULL) return node;
  MPI_Comm comm = MPI_COMM_NULL;
  GLAM_CHECK_MPI(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &comm));
  GLAM_CHECK_MPI(MPI_Comm_rank(comm, &node.rank));
  GLAM_CHECK_MPI(MPI_Comm_size(comm, &node.size));
  GLAM_CHECK_MPI(MPI_Comm_free(&comm));
  return node;
}

bool Mesh::any(bool flag) const { return reduce_flag(flag, MPI_MAX); }

ExpertPlacement Mesh::place_experts(int64_t E) const {
  ExpertPlacement p;
  p.n_experts = E;
  const int64_t D = data_size;
  GLAM_REQUIRE(E % D == 0 || D % E == 0, "mesh ", data_size, "x", model_size, ": ", E,
               " experts cannot be placed on a data axis of ", D,
               " (model.n_experts must be a multiple or a divisor of the data axis size)");
  p.replicas = E >= D ? 1 : D / E;
  p.local = E >= D ? E / D : 1;
  p.first = (data_rank / p.replicas) * p.local;
  if (p.replicas > 1) {
    GLAM_CHECK_MPI(MPI_Comm_split(data_comm, static_cast<int>(data_rank / p.replicas), data_rank, &p.replica_comm));
  } else {
    p.replica_comm = MPI_COMM_SELF;
  }
  return p;
}

void Mesh::alltoall_counts_data(const std::vector<int64_t>& send, std::vector<int64_t>& recv, int64_t k) const {
  recv.resize(send.size());
  if (data_size == 1) { recv = send; return; }
  CommTimer timer(stats);
  GLAM_CHECK_MPI(MPI_Alltoall(send.data(), to_int(k), MPI_INT64_T, recv.data(), to_int(k), MPI_INT64_T, data_comm));
}

// Counts and displacements go to MPI as ints: in elements while they fit under
// count_limit, otherwise in rows of a contiguous datatype of `width` elements.
// elem is MPI_FLOAT (fp32 exchanges) or MPI_UINT16_T (bf16 bits).
void Mesh::alltoallv_rows(const void* send, const std::vector<int64_t>& send_rows, void* recv,
                          const std::vector<int64_t>& recv_rows, int64_t width, MPI_Datatype elem,
                          int64_t elem_bytes) const {
  const int D = data_size;
  CommTimer timer(stats, &stats.alltoall_seconds);
  int64_t send_total = 0, recv_total = 0;
  for (int r = 0; r < D; r++) {
    send_total += send_rows[r];
    recv_total += recv_rows[r];
    if (r != data_rank) stats.alltoall_bytes += send_rows[r] * width * elem_bytes;
  }
  stats.alltoall_calls++;
  // one decision for all ranks of the axis, so they all take the same path (or all stop)
  int64_t most_rows = std::max(send_total, recv_total);
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &most_rows, 1, MPI_INT64_T, MPI_MAX, data_comm));
  const bool in_elements = most_rows * width <= count_limit;
  const int64_t unit = in_elements ? width : 1;  // elements per counted element
  GLAM_REQUIRE(most_rows * unit <= count_limit, "all-to-all of ", most_rows,
               " rows exceeds the MPI count limit ", count_limit, " even in row units");
  MPI_Datatype type = elem;
  if (!in_elements) {
    GLAM_CHECK_MPI(MPI_Type_contiguous(to_int(width), elem, &type));
    GLAM_CHECK_MPI(MPI_Type_commit(&type));
  }
  std::vector<int> sc(D), sd(D), rc(D), rd(D);
  int64_t so = 0, ro = 0;
  for (int r = 0; r < D; r++) {
    sc[r] = to_int(send_rows[r] * unit); sd[r] = to_int(so * unit); so += send_rows[r];
    rc[r] = to_int(recv_rows[r] * unit); rd[r] = to_int(ro * unit); ro += recv_rows[r];
  }
  GLAM_CHECK_MPI(MPI_Alltoallv(send, sc.data(), sd.data(), type, recv, rc.data(), rd.data(), type, data_comm));
  if (!in_elements) GLAM_CHECK_MPI(MPI_Type_free(&type));
}

void Mesh::alltoallv_rows_data(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                               const std::vector<int64_t>& recv_rows, int64_t width, CopyFn copy) const {
  if (data_size == 1) {
    const size_t bytes = sizeof(float) * static_cast<size_t>(send_rows[0] * width);
    if (bytes == 0) return;
    if (copy) copy(recv, send, bytes);
    else std::memcpy(recv, send, bytes);
    return;
  }
  alltoallv_rows(send, send_rows, recv, recv_rows, width, MPI_FLOAT, sizeof(float));
}

void Mesh::alltoallv_rows_data_bf16(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                                    const std::vector<int64_t>& recv_rows, int64_t width) const {
  int64_t n_send = 0, n_recv = 0;
  for (int r = 0; r < data_size; r++) { n_send += send_rows[r]; n_recv += recv_rows[r]; }
  std::vector<uint16_t> wire_send(n_send * width), wire_recv(n_recv * width);  // [rows, width] bf16
  cpu::to_bf16(wire_send.data(), send, n_send * width);
  if (data_size == 1) wire_recv = wire_send;
  else alltoallv_rows(wire_send.data(), send_rows, wire_recv.data(), recv_rows, width, MPI_UINT16_T, 2);
  for (int64_t i = 0; i < n_recv * width; i++) recv[i] = from_bf16(wire_recv[i]);
}

void Mesh::allreduce_sum_model_bf16(float* buf, int64_t n) const {
  if (model_size == 1 || n == 0) return;
  std::vector<uint16_t> wire(n);  // [n] bf16
  cpu::to_bf16(wire.data(), buf, n);
  {
    CommTimer timer(stats);
    stats.allreduce_model_bytes += 2 * n;
    stats.allreduce_calls++;
    MPI_Op op;
    GLAM_CHECK_MPI(MPI_Op_create(&sum_bf16, 1, &op));
    for (int64_t done = 0; done < n; done += count_limit) {
      const int64_t part = std::min<int64_t>(count_limit, n - done);
      GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, wire.data() + done, to_int(part), MPI_UINT16_T, op, model_comm));
    }
    GLAM_CHECK_MPI(MPI_Op_free(&op));
  }
  for (int64_t i = 0; i < n; i++) buf[i] = from_bf16(wire[i]);
}

static double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Mesh::start_reduce_scatter_sum_data(const float* buf, const std::vector<int64_t>& counts,
                                         InFlight& x) const {
  GLAM_ASSERT(x.finished_);
  x.mesh_ = this;
  x.counts_.assign(data_size, 0);
  int64_t total = 0;
  for (int r = 0; r < data_size; r++) {
    GLAM_REQUIRE(counts[r] <= count_limit, "reduce-scatter part of ", counts[r], " elements exceeds the MPI count limit");
    x.counts_[r] = to_int(counts[r]);
    total += counts[r];
  }
  x.part_.assign(counts[data_rank], 0.0f);
  if (data_size == 1) {  // nothing to sum: the part is the buffer
    std::memcpy(x.part_.data(), buf, sizeof(float) * x.part_.size());
    return;
  }
  CommTimer timer(stats);
  stats.reduce_scatter_bytes += total * static_cast<int64_t>(sizeof(float));
  stats.allreduce_calls++;
  stats.nonblocking_calls++;
  if (stats.active++ == 0) stats.active_since = now_seconds();
  x.finished_ = false;
  GLAM_CHECK_MPI(MPI_Ireduce_scatter(buf, x.part_.data(), x.counts_.data(), MPI_FLOAT, MPI_SUM, data_comm,
                                     &x.request_));
}

bool InFlight::done() {
  if (finished_) return true;
  const double t0 = now_seconds();
  int flag = 0;
  GLAM_CHECK_MPI(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE));
  mesh_->stats.seconds += now_seconds() - t0;
  if (flag) finish();
  return finished_;
}

void InFlight::wait() {
  if (finished_) return;
  const double t0 = now_seconds();
  GLAM_CHECK_MPI(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  const double waited = now_seconds() - t0;
  mesh_->stats.seconds += waited;
  mesh_->stats.exposed_seconds += waited;
  finish();
}

void InFlight::finish() {
  CommStats& s = mesh_->stats;
  if (--s.active == 0) s.inflight_seconds += now_seconds() - s.active_since;
  finished_ = true;
}

InFlight::~InFlight() {
  if (!finished_) GLAM_CHECK_MPI(MPI_Wait(&request_, MPI_STATUS_IGNORE));  // never leave MPI writing into freed memory
}

// MPI's counts and displacements of an all-gather of parts counts[r] over data.
static void gather_layout(const std::vector<int64_t>& counts, int64_t limit, std::vector<int>& rc,
                          std::vector<int>& rd) {
  rc.assign(counts.size(), 0);
  rd.assign(counts.size(), 0);
  int64_t offset = 0;
  for (size_t r = 0; r < counts.size(); r++) {
    GLAM_REQUIRE(offset + counts[r] <= limit, "all-gather of ", offset + counts[r],
                 " elements exceeds the MPI count limit");
    rc[r] = to_int(counts[r]);
    rd[r] = to_int(offset);
    offset += counts[r];
  }
}

void Mesh::allgather_data(float* buf, const std::vector<int64_t>& counts) const {
  if (data_size == 1) return;
  CommTimer timer(stats);
  std::vector<int> rc, rd;
  gather_layout(counts, count_limit, rc, rd);
  stats.allgather_bytes += counts[data_rank] * static_cast<int64_t>(sizeof(float));
  stats.allreduce_calls++;
  GLAM_CHECK_MPI(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, rc.data(), rd.data(), MPI_FLOAT, data_comm));
}

void Mesh::start_allgather_data(float* buf, const std::vector<int64_t>& counts, InFlight& x) const {
  GLAM_ASSERT(x.finished_);
  x.mesh_ = this;
  if (data_size == 1) return;  // the buffer holds the whole tensor already
  CommTimer timer(stats);
  gather_layout(counts, count_limit, x.counts_, x.displs_);
  stats.allgather_bytes += counts[data_rank] * static_cast<int64_t>(sizeof(float));
  stats.allreduce_calls++;
  stats.nonblocking_calls++;
  if (stats.active++ == 0) stats.active_since = now_seconds();
  x.finished_ = false;
  GLAM_CHECK_MPI(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, x.counts_.data(), x.displs_.data(),
                                 MPI_FLOAT, data_comm, &x.request_));
}

// ---- non-blocking all-to-all (train.exchange_chunks) ----------------------------

void Mesh::start_alltoallv_rows_data(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                                     const std::vector<int64_t>& recv_rows, int64_t width, bool bf16,
                                     AlltoallInFlight& x) const {
  GLAM_ASSERT(x.finished_);
  const int D = data_size;
  int64_t n_send = 0, n_recv = 0;
  for (int r = 0; r < D; r++) { n_send += send_rows[r]; n_recv += recv_rows[r]; }
  x.mesh_ = this;
  x.recv_ = recv;
  x.wire_recv_.clear();
  if (bf16) {  // rounded as alltoallv_rows_data_bf16 rounds, also on one data rank
    x.wire_send_.resize(n_send * width);
    cpu::to_bf16(x.wire_send_.data(), send, n_send * width);
    if (D > 1) x.wire_recv_.resize(n_recv * width);
  }
  if (D == 1) {
    if (bf16) for (int64_t i = 0; i < n_recv * width; i++) recv[i] = from_bf16(x.wire_send_[i]);
    else if (n_send > 0) std::memcpy(recv, send, sizeof(float) * n_send * width);
    return;
  }
  const double t0 = now_seconds();
  GLAM_REQUIRE(std::max(n_send, n_recv) <= count_limit, "all-to-all of ", std::max(n_send, n_recv),
               " rows exceeds the MPI count limit ", count_limit);
  x.counts_.assign(4 * D, 0);  // MPI reads them until the exchange is done
  int* sc = x.counts_.data(), *sd = sc + D, *rc = sc + 2 * D, *rd = sc + 3 * D;
  for (int r = 0, so = 0, ro = 0; r < D; r++) {
    sc[r] = to_int(send_rows[r]); sd[r] = so; so += sc[r];
    rc[r] = to_int(recv_rows[r]); rd[r] = ro; ro += rc[r];
    if (r != data_rank) stats.alltoall_bytes += send_rows[r] * width * (bf16 ? 2 : 4);
  }
  stats.alltoall_calls++;
  stats.a2a_nonblocking_calls++;
  if (stats.a2a_active++ == 0) stats.a2a_active_since = t0;
  MPI_Datatype row;  // freed at once: MPI keeps it alive for the pending exchange
  GLAM_CHECK_MPI(MPI_Type_contiguous(to_int(width), bf16 ? MPI_UINT16_T : MPI_FLOAT, &row));
  GLAM_CHECK_MPI(MPI_Type_commit(&row));
  const void* sbuf = bf16 ? static_cast<const void*>(x.wire_send_.data()) : send;
  void* rbuf = bf16 ? static_cast<void*>(x.wire_recv_.data()) : recv;
  x.finished_ = false;
  GLAM_CHECK_MPI(MPI_Ialltoallv(sbuf, sc, sd, row, rbuf, rc, rd, row, data_comm, &x.request_));
  GLAM_CHECK_MPI(MPI_Type_free(&row));
  const double spent = now_seconds() - t0;
  stats.seconds += spent;
  stats.alltoall_seconds += spent;
  stats.a2a_exposed_seconds += spent;
}

bool AlltoallInFlight::done() {
  if (finished_) return true;
  const double t0 = now_seconds();
  int flag = 0;
  GLAM_CHECK_MPI(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE));
  const double spent = now_seconds() - t0;
  CommStats& s = mesh_->stats;
  s.seconds += spent;
  s.alltoall_seconds += spent;
  s.a2a_exposed_seconds += spent;
  if (flag) finish();
  return finished_;
}

void AlltoallInFlight::wait() {
  if (finished_) return;
  const double t0 = now_seconds();
  GLAM_CHECK_MPI(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  const double spent = now_seconds() - t0;
  CommStats& s = mesh_->stats;
  s.seconds += spent;
  s.alltoall_seconds += spent;
  s.a2a_exposed_seconds += spent;
  finish();
}

void AlltoallInFlight::finish() {
  CommStats& s = mesh_->stats;
  if (--s.a2a_active == 0) s.a2a_inflight_seconds += now_seconds() - s.a2a_active_since;
  for (size_t i = 0; i < wire_recv_.size(); i++) recv_[i] = from_bf16(wire_recv_[i]);
  finished_ = true;
}

AlltoallInFlight::~AlltoallInFlight() {
  if (!finished_) GLAM_CHECK_MPI(MPI_Wait(&request_, MPI_STATUS_IGNORE));  // never leave MPI writing into freed memory
}

}  // namespace glam
