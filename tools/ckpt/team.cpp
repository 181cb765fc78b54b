// glam-ckpt: the ranks of `mpirun -np N glam-ckpt verify|export|reshard` that
// share a command's work, and every MPI call the tool makes after MPI_Init.
// Errors follow one rule: a step that may fail on some ranks only (a read, a
// write, a file only rank 0 creates) runs inside Team::agree, which tells every
// rank whether any failed; then every rank throws the same UserError, so all exit
// with status 2 and none waits in a collective that another rank never reaches.
#include <filesystem>
#include <new>

#include "ckpt.h"
#include "glam/data/bounded_read.h"

namespace glam::ckpt {

std::string current_error_text() {
  try {
    throw;
  } catch (const UserError& e) {
    return e.what();
  } catch (const std::filesystem::filesystem_error& e) {
    return e.what();
  } catch (const std::bad_alloc&) {
    const std::string file = ReadingFile::current();
    return msg("out of memory while reading '", file.empty() ? "the input" : file, "' (a damaged size in the file?)");
  } catch (const std::exception& e) {
    return e.what();
  }
}

const Team& Team::world() {
  static const Team team = [] {
    Team t;
    t.comm_ = MPI_COMM_WORLD;
    GLAM_CHECK_MPI(MPI_Comm_rank(t.comm_, &t.rank_));
    GLAM_CHECK_MPI(MPI_Comm_size(t.comm_, &t.size_));
    return t;
  }();
  return team;
}

void Team::agree(const std::function<void()>& step) const {
  std::string error;
  bool failed = false;
  try {
    step();
  } catch (...) {
    failed = true;
    error = current_error_text();
  }
  if (size_ == 1) {
    if (failed) throw UserError(error);
    return;
  }
  int first = failed ? rank_ : size_;  // the lowest failing rank speaks for all
  GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm_));
  if (first == size_) return;
  int length = static_cast<int>(std::min<size_t>(error.size(), 1 << 20));
  GLAM_CHECK_MPI(MPI_Bcast(&length, 1, MPI_INT, first, comm_));
  error.resize(static_cast<size_t>(length));
  GLAM_CHECK_MPI(MPI_Bcast(error.data(), length, MPI_CHAR, first, comm_));
  throw UserError(first == 0 ? error : msg(error, " (on rank ", first, " of ", size_, ")"));
}

void Team::sum(std::vector<uint64_t>& values) const {
  if (size_ == 1) return;
  constexpr size_t kPart = 1 << 24;  // keeps every count an int
  for (size_t at = 0; at < values.size(); at += kPart) {
    const int n = static_cast<int>(std::min(kPart, values.size() - at));
    GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, values.data() + at, n, MPI_UINT64_T, MPI_SUM, comm_));
  }
}

int64_t Team::max(int64_t value) const {
  if (size_ > 1) GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT64_T, MPI_MAX, comm_));
  return value;
}

}  // namespace glam::ckpt
