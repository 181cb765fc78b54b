// The one-rank error path: print where and on which rank, then abort the job.
#include "glam/check.h"

#include <mpi.h>
#include <cstdio>
#include <cstdlib>

namespace glam {

[[noreturn]] void fatal(const std::string& what, const char* file, int line) {
  int initialised = 0, rank = 0;
  MPI_Initialized(&initialised);
  if (initialised) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "glam: fatal on rank %d: %s (%s:%d)\n", rank, what.c_str(), file, line);
  std::fflush(stderr);
  if (initialised) MPI_Abort(MPI_COMM_WORLD, 3);
  std::exit(3);
}

}  // namespace glam
