// The one-rank error path: print where and on which rank, then abort the job.
#include "glam/base/check.h"

#include <mpi.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace glam {

// The error path itself: its MPI calls are not checked (a failure here has
// nowhere left to go but exit).
[[noreturn]] void fatal(const std::string& what, const char* file, int line) {
  int initialised = 0, finalised = 0, rank = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (finalised) initialised = 0;  // a failed MPI_Finalize: no MPI call is allowed any more
  if (initialised) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "glam: fatal on rank %d: %s (%s:%d)\n", rank, what.c_str(), file, line);
  std::fflush(stderr);
  if (initialised) MPI_Abort(MPI_COMM_WORLD, 3);
  std::exit(3);
}

std::string mpi_error(int rc, const char* call) {
  char text[MPI_MAX_ERROR_STRING] = "unknown error";
  int length = 0;
  if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) std::snprintf(text, sizeof text, "error code %d", rc);
  return msg("MPI call failed: ", call, ": ", text);
}

[[noreturn]] void fatal_mpi(int rc, const char* call, const char* file, int line) {
  fatal(mpi_error(rc, call), file, line);
}

void debug_kill_point(const char* where, int64_t step, int64_t index) {
  static const char* spec = std::getenv("GLAM_DEBUG_KILL_AT");
  if (!spec) return;
  int rank = -1, world_rank = 0;
  long long at = -1, at_index = 0;
  char point[32] = "step";
  const int n = std::sscanf(spec, "%d:%lld:%31[a-z]:%lld", &rank, &at, point, &at_index);
  if (n < 2) return;
  GLAM_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  if (rank == world_rank && at == step && std::strcmp(point, where) == 0 && at_index == index) std::raise(SIGKILL);
}

}  // namespace glam
