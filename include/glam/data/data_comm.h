// The collectives of the data tools (encode.h) over a group of ranks. The
// model's Mesh (mesh.h) lives in glam_model, which glam-tokenize does not link
// (BLAS, OpenMP, oneDNN); this is the small interface encode needs, so that
// encode.cpp itself never calls MPI. On one rank every call returns at once.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace glam {

class DataComm {
 public:
  static DataComm world();   // every rank of MPI_COMM_WORLD
  static DataComm single();  // this rank alone (MPI_COMM_SELF)

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  // True on every rank when flag is true on any.
  bool any(bool flag) const;
  // Sums (or the maximum) in place over the ranks.
  void sum(int64_t* buf, int64_t n) const;
  void sum(double* buf, int64_t n) const;
  double max(double v) const;
  // Every rank's `mine`, concatenated in rank order; counts[r] gets rank r's length.
  std::vector<int64_t> allgather(const std::vector<int64_t>& mine, std::vector<int64_t>* counts = nullptr) const;
  // One failure for every rank: of the ranks whose `message` is not empty, the
  // one with the smallest `key` wins; its message on every rank ("" when none failed).
  std::string first_failure(const std::string& message, int64_t key) const;
  // Bytes to every rank: send holds send_counts[0] bytes for rank 0, then rank 1's,
  // ...; recv gets recv_counts[r] bytes from each rank r in rank order.
  void alltoallv_bytes(const std::string& send, const std::vector<int64_t>& send_counts, std::string& recv,
                       const std::vector<int64_t>& recv_counts) const;
  void barrier() const;

 private:
  explicit DataComm(MPI_Comm comm);
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace glam
