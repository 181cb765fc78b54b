// MPI for the life of a program (include/glam/base/mpi_session.h).
#include "glam/base/mpi_session.h"

#include <mpi.h>

#include <cstdlib>

#include "glam/base/check.h"

namespace glam {

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialised = 0;
  GLAM_CHECK_MPI(MPI_Initialized(&initialised));
  if (!initialised) {
    // MPI's default handler is still in force here: a failure aborts inside MPI_Init.
    GLAM_CHECK_MPI(MPI_Init(argc, argv));
    owner_ = true;
  }
  GLAM_CHECK_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  GLAM_CHECK_MPI(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));  // Mesh::single, DataComm::single
  GLAM_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  GLAM_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
}

MpiSession::~MpiSession() {
  if (owner_) GLAM_CHECK_MPI(MPI_Finalize());
}

int MpiSession::broadcast_from_root(int value) const {
  GLAM_CHECK_MPI(MPI_Bcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD));
  return value;
}

// The error path's own call: not checked, a failure has nowhere left to go but exit.
void MpiSession::abort(int status) const {
  MPI_Abort(MPI_COMM_WORLD, status);
  std::exit(status);
}

}  // namespace glam
