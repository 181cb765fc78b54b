// The data tools' collectives (include/glam/data/data_comm.h) over MPI.
#include "glam/data/data_comm.h"

#include <climits>

#include "glam/base/check.h"

namespace glam {

namespace {

int to_count(int64_t n, const char* what) {
  GLAM_REQUIRE(n >= 0 && n <= INT_MAX, what, " of ", n, " exceeds the MPI count limit ", INT_MAX,
               " (use more ranks or smaller --shard-mb)");
  return static_cast<int>(n);
}

}  // namespace

DataComm::DataComm(MPI_Comm comm) : comm_(comm) {
  GLAM_CHECK_MPI(MPI_Comm_rank(comm, &rank_));
  GLAM_CHECK_MPI(MPI_Comm_size(comm, &size_));
}

DataComm DataComm::world() { return DataComm(MPI_COMM_WORLD); }
DataComm DataComm::single() { return DataComm(MPI_COMM_SELF); }

bool DataComm::any(bool flag) const {
  int v = flag ? 1 : 0;
  if (size_ > 1) GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, comm_));
  return v != 0;
}

void DataComm::sum(int64_t* buf, int64_t n) const {
  if (size_ > 1 && n > 0)
    GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, to_count(n, "a sum"), MPI_INT64_T, MPI_SUM, comm_));
}

void DataComm::sum(double* buf, int64_t n) const {
  if (size_ > 1 && n > 0)
    GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, to_count(n, "a sum"), MPI_DOUBLE, MPI_SUM, comm_));
}

double DataComm::max(double v) const {
  if (size_ > 1) GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, comm_));
  return v;
}

std::vector<int64_t> DataComm::allgather(const std::vector<int64_t>& mine, std::vector<int64_t>* counts) const {
  std::vector<int64_t> n(size_, static_cast<int64_t>(mine.size()));
  if (size_ > 1) GLAM_CHECK_MPI(MPI_Allgather(MPI_IN_PLACE, 1, MPI_INT64_T, n.data(), 1, MPI_INT64_T, comm_));
  std::vector<int> rc(size_), rd(size_);
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) {
    rc[r] = to_count(n[r], "an all-gather");
    rd[r] = to_count(total, "an all-gather");
    total += n[r];
  }
  std::vector<int64_t> all(static_cast<size_t>(total));
  if (size_ == 1)
    all = mine;
  else
    GLAM_CHECK_MPI(MPI_Allgatherv(mine.data(), rc[rank_], MPI_INT64_T, all.data(), rc.data(), rd.data(),
                                  MPI_INT64_T, comm_));
  if (counts) *counts = n;
  return all;
}

std::string DataComm::first_failure(const std::string& message, int64_t key) const {
  if (size_ == 1) return message;
  int64_t best[2] = {message.empty() ? INT64_MAX : key, message.empty() ? INT64_MAX : rank_};
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &best[0], 1, MPI_INT64_T, MPI_MIN, comm_));
  if (best[0] == INT64_MAX) return "";
  if (message.empty() || key != best[0]) best[1] = INT64_MAX;
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &best[1], 1, MPI_INT64_T, MPI_MIN, comm_));
  const int root = static_cast<int>(best[1]);
  int64_t length = static_cast<int64_t>(message.size());
  GLAM_CHECK_MPI(MPI_Bcast(&length, 1, MPI_INT64_T, root, comm_));
  std::string out = rank_ == root ? message : std::string(static_cast<size_t>(length), '\0');
  GLAM_CHECK_MPI(MPI_Bcast(out.data(), to_count(length, "a message"), MPI_CHAR, root, comm_));
  return out;
}

void DataComm::alltoallv_bytes(const std::string& send, const std::vector<int64_t>& send_counts, std::string& recv,
                               const std::vector<int64_t>& recv_counts) const {
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t so = 0, ro = 0;
  for (int r = 0; r < size_; ++r) {
    sc[r] = to_count(send_counts[r], "an exchange");
    sd[r] = to_count(so, "an exchange");
    rc[r] = to_count(recv_counts[r], "an exchange");
    rd[r] = to_count(ro, "an exchange");
    so += send_counts[r];
    ro += recv_counts[r];
  }
  recv.assign(static_cast<size_t>(ro), '\0');
  if (size_ == 1) {
    recv = send;
    return;
  }
  GLAM_CHECK_MPI(MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_BYTE, recv.data(), rc.data(), rd.data(),
                               MPI_BYTE, comm_));
}

void DataComm::barrier() const {
  if (size_ > 1) GLAM_CHECK_MPI(MPI_Barrier(comm_));
}

}  // namespace glam
