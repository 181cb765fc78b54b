// The 2D device mesh (data x model). Every layer receives `const Mesh&` and asks it
// for the collectives it needs; on a 1x1 mesh each call returns at once, so the
// single-rank code path is the multi-rank one with trivial communicators.
// All MPI traffic of the program goes through this module (the exceptions are
// named in docs/ARCHITECTURE.md).
#pragma once
#include <mpi.h>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "glam/io/h5.h"  // h5::Plist, for mpio_file_access

namespace glam {

// Time and bytes spent in MPI by this rank, for the phase report and the benchmark.
struct CommStats {
  double seconds = 0.0;            // wall time inside MPI calls of the mesh
  int64_t alltoall_bytes = 0;      // bytes this rank sent through Alltoallv (payload)
  int64_t allreduce_data_bytes = 0;   // bytes this rank contributed to all-reduces over data
  int64_t allreduce_model_bytes = 0;  // ... over model (tensor-parallel activations)
  int64_t allreduce_other_bytes = 0;  // ... over expert replicas or the whole mesh
  int64_t reduce_scatter_bytes = 0;   // bytes this rank contributed to reduce-scatters over data
  int64_t allgather_bytes = 0;        // bytes this rank contributed to all-gathers over data (its part)
  // Non-blocking reductions (ScatterInFlight): wall time while at least one was in
  // flight, and the part of it this rank spent waiting (exposed, not behind compute).
  double inflight_seconds = 0.0, exposed_seconds = 0.0;
  int64_t nonblocking_calls = 0;
  int active = 0;             // reductions in flight now
  double active_since = 0.0;  // when the first of them started
  int64_t alltoall_calls = 0, allreduce_calls = 0;
  // Expert all-to-alls: wall time inside the blocking ones (train.exchange_chunks 1:
  // all of it exposed); for the non-blocking ones (AlltoallInFlight, more chunks) the
  // wall time while at least one was in flight, and the time this rank spent inside
  // their MPI calls (starting, testing, waiting), which no compute hid.
  double alltoall_seconds = 0.0;
  double a2a_inflight_seconds = 0.0, a2a_exposed_seconds = 0.0;
  int64_t a2a_nonblocking_calls = 0;
  int a2a_active = 0;             // non-blocking all-to-alls in flight now
  double a2a_active_since = 0.0;  // when the first of them started
};

// Where the E experts of a MoE layer live on the data axis (experts with the same
// index in different layers live on the same ranks).
//   E >= D: E % D == 0, data rank d holds experts [d*E/D, (d+1)*E/D), no replicas.
//   E <  D: D % E == 0, each expert has R = D/E replicas; data rank d holds expert
//           d / R, tokens of rank d go to the replica d % R of their expert, and
//           the replicas' gradients are summed over replica_comm.
struct ExpertPlacement {
  int64_t n_experts = 0;     // E
  int64_t local = 0;         // experts held by this rank
  int64_t replicas = 1;      // R
  int64_t first = 0;         // global index of this rank's first expert
  MPI_Comm replica_comm = MPI_COMM_NULL;  // ranks holding the same experts (same model rank)
  // Data rank that computes expert e for tokens of data rank d.
  int owner(int64_t e, int d) const { return static_cast<int>((e / local) * replicas + d % replicas); }
};

struct Mesh;

// A collective over data started without waiting: a reduce-scatter
// (Mesh::start_reduce_scatter_sum_data; the sum of this rank's part lands in `part`)
// or an all-gather (Mesh::start_allgather_data, into the caller's buffer), finished
// when done() or wait() says so. MPI advances it only inside MPI calls: done() is
// such a call (test it between kernels), wait() blocks. Not copyable; destroyed
// only when finished.
class InFlight {
 public:
  InFlight() = default;
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
  ~InFlight();
  bool done();
  void wait();
  const std::vector<float>& part() const { return part_; }

 private:
  friend struct Mesh;
  void finish();
  const Mesh* mesh_ = nullptr;
  MPI_Request request_ = MPI_REQUEST_NULL;
  std::vector<float> part_;  // [counts[data_rank]] this rank's sum
  std::vector<int> counts_, displs_;  // [data_size] MPI's counts (and the all-gather's offsets)
  bool finished_ = true;
};
using ScatterInFlight = InFlight;

// An all-to-all over data started by Mesh::start_alltoallv_rows_data: the rows land
// in its recv when done() or wait() says so; send and recv stay untouched until then.
// Like ScatterInFlight, MPI advances it only inside MPI calls (done() is one). With
// bf16 the wire buffers live here and the received rows are widened when it finishes.
class AlltoallInFlight {
 public:
  AlltoallInFlight() = default;
  AlltoallInFlight(const AlltoallInFlight&) = delete;
  AlltoallInFlight& operator=(const AlltoallInFlight&) = delete;
  ~AlltoallInFlight();
  bool done();
  void wait();

 private:
  friend struct Mesh;
  void finish();
  const Mesh* mesh_ = nullptr;
  MPI_Request request_ = MPI_REQUEST_NULL;
  std::vector<int> counts_;                   // [4, D] send counts, displacements, recv counts, displacements (rows)
  std::vector<uint16_t> wire_send_, wire_recv_;  // [rows, width] bf16 on the wire
  float* recv_ = nullptr;                     // bf16: where wire_recv_ is widened to
  bool finished_ = true;
};

struct Mesh {
  int data_size = 1, model_size = 1;   // mesh shape D x M
  int data_rank = 0, model_rank = 0;   // this rank's cell
  int world_rank = 0, world_size = 1;

  // Builds a D x M mesh over MPI_COMM_WORLD. shape "DxM"; empty = all ranks on data.
  static Mesh create(const std::string& shape);
  // A 1x1 mesh on MPI_COMM_SELF, for tests and tools.
  static Mesh single();

  bool is_root() const { return world_rank == 0; }
  // A stand-in for one rank of a larger mesh (sizes and ranks set by a test or a
  // tool, no communicator): it cannot take part in a collective.
  bool is_stand_in() const { return world == MPI_COMM_NULL && world_size > 1; }
  // HDF5's MPI-IO file access over the mesh's ranks (h5::mpio_file_access): the
  // one way a library gets hold of the mesh's communicator.
  h5::Plist mpio_file_access() const;

  // Splits E experts over the data axis; UserError when neither divides the other.
  ExpertPlacement place_experts(int64_t n_experts) const;

  // All-to-all over the data axis of rows of `width` floats. send holds the rows for
  // data rank 0, then 1, ... (send_rows[r] of them); recv receives recv_rows[r] rows
  // from each rank r in the same order. Counts beyond count_limit elements switch
  // to a row datatype so no int count overflows.
  // On a data axis of one rank no MPI call is made: the rows are copied with
  // copy(dst, src, bytes), std::memcpy when copy is null. A backend whose buffers
  // may be device memory (device pointers for a CUDA-aware MPI) passes its own
  // copy, so device pointers never reach memcpy; this module knows no device.
  using CopyFn = void (*)(void* dst, const void* src, size_t bytes);
  void alltoallv_rows_data(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                           const std::vector<int64_t>& recv_rows, int64_t width, CopyFn copy = nullptr) const;
  // Every data rank sends k counts to every other: send [D, k] -> recv [D, k].
  void alltoall_counts_data(const std::vector<int64_t>& send, std::vector<int64_t>& recv, int64_t k) const;

  // Sum (or max) in place over one axis or over the whole mesh.
  void allreduce_sum_model(float* buf, int64_t n) const;
  void allreduce_sum_model(double* buf, int64_t n) const;
  void allreduce_max_model(float* buf, int64_t n) const;
  void allreduce_sum_data(float* buf, int64_t n) const;
  void allreduce_sum_data(double* buf, int64_t n) const;
  void allreduce_sum_world(double* buf, int64_t n) const;
  void allreduce_sum(float* buf, int64_t n, MPI_Comm comm) const;
  // out [model_size, n] = every model rank's in [n], in model-rank order.
  void allgather_model(const float* in, int64_t n, float* out) const;
  // train.shard_state over the data axis. buf [sum counts] holds data rank r's part
  // at offset counts[0] + ... + counts[r-1]; allgather: every part becomes its
  // owner's. The reduce-scatter runs without waiting (start_reduce_scatter_sum_data).
  void allgather_data(float* buf, const std::vector<int64_t>& counts) const;
  // The reduce-scatter without waiting: buf must stay untouched until x finishes.
  void start_reduce_scatter_sum_data(const float* buf, const std::vector<int64_t>& counts,
                                     InFlight& x) const;
  // allgather_data without waiting (train.shard_weights): buf must stay untouched,
  // but for this rank's part, until x finishes.
  void start_allgather_data(float* buf, const std::vector<int64_t>& counts, InFlight& x) const;
  // bf16 exchanges (train.exchange_dtype): the same collectives with the payload
  // rounded to bfloat16 on the wire; the sums of the all-reduce are taken in fp32
  // at every step and rounded again (MPI sees 2-byte elements).
  void allreduce_sum_model_bf16(float* buf, int64_t n) const;
  void alltoallv_rows_data_bf16(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                                const std::vector<int64_t>& recv_rows, int64_t width) const;
  // alltoallv_rows_data (bf16: alltoallv_rows_data_bf16) without waiting, for
  // train.exchange_chunks: counts in rows of a contiguous type (no collective to
  // agree on units); on a data axis of one rank the rows are copied at once.
  void start_alltoallv_rows_data(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                                 const std::vector<int64_t>& recv_rows, int64_t width, bool bf16,
                                 AlltoallInFlight& x) const;
  // Sums over the expert replicas of a placement (place.replica_comm).
  void allreduce_sum_replicas(float* buf, int64_t n, const ExpertPlacement& place) const;
  void allreduce_sum_world(float* buf, int64_t n) const;
  // One value for the whole mesh, the same on every rank.
  double max_world(double v) const;
  uint64_t sum_world(uint64_t v) const;
  // Rank 0's buf [n] on every rank of the mesh.
  void broadcast_world(int32_t* buf, int64_t n) const;
  // True on every rank when `flag` is true on any rank (one decision for the mesh).
  bool any(bool flag) const;
  // True on every rank when `flag` is true on every rank.
  bool all(bool flag) const;
  // Returns when every rank of the mesh has called it.
  void barrier() const;
  // The ranks of the mesh on this rank's node (they share its memory and GPUs):
  // this rank's place among them, in world-rank order, and how many they are.
  // Collective over the mesh.
  struct NodeRanks { int rank = 0, size = 1; };
  NodeRanks node_ranks() const;

  // Largest element count passed to MPI as an int; tests lower it to exercise the
  // large-count path.
  int64_t count_limit = INT_MAX;
  mutable CommStats stats;

  // The all-to-all of alltoallv_rows_data for any element type (elem_bytes each).
  void alltoallv_rows(const void* send, const std::vector<int64_t>& send_rows, void* recv,
                      const std::vector<int64_t>& recv_rows, int64_t width, MPI_Datatype elem,
                      int64_t elem_bytes) const;

  // Which share of a global dim of size n this rank holds on an axis.
  static int64_t shard_size(int64_t n, int parts) { return n / parts; }

 private:
  // The communicators: only this module calls MPI on them; everything else asks
  // for a collective above. They inherit MPI_COMM_WORLD's MPI_ERRORS_RETURN
  // (base/mpi_session.h), so GLAM_CHECK_MPI sees every failure on them.
  // One in-place all-reduce of n values small enough for an int count (statistics).
  void allreduce_small(void* buf, int64_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm) const;
  bool reduce_flag(bool flag, MPI_Op op) const;
  MPI_Comm world = MPI_COMM_NULL;      // all ranks of the mesh
  MPI_Comm data_comm = MPI_COMM_NULL;  // ranks that share model_rank (the data axis)
  MPI_Comm model_comm = MPI_COMM_NULL; // ranks that share data_rank (the model axis)
};

}  // namespace glam
