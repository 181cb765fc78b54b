// Errors go through one place with two paths (LAMMPS style):
//  - UserError: bad configuration or input that every rank detects the same way.
//    main() catches it, rank 0 prints "glam: error: ..." once, all ranks exit(2).
//  - fatal(): an error only this rank sees (I/O, device). Prints the rank and aborts the job.
// Every external call (MPI, HDF5, BLAS setup) is checked with a macro naming file and line;
// CUDA and cuBLAS calls with GLAM_CHECK_CUDA / GLAM_CHECK_CUBLAS (glam/layers/cuda/check.h).
// MPI returns errors to these checks only on communicators whose error handler
// is MPI_ERRORS_RETURN, which MpiSession (mpi_session.h) sets on MPI_COMM_WORLD
// and every communicator made from it inherits; under MPI's default handler the
// job would abort inside the call first.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace glam {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fatal(const std::string& what, const char* file, int line);
// fatal() for an MPI call that returned rc, with the message of mpi_error.
[[noreturn]] void fatal_mpi(int rc, const char* call, const char* file, int line);
// "MPI call failed: <call>: <MPI's error string for rc>".
std::string mpi_error(int rc, const char* call);

// Test hook: GLAM_DEBUG_KILL_AT="RANK:STEP[:WHERE[:INDEX]]" kills world rank RANK
// with SIGKILL when it reaches point WHERE ("step", the default, or "checkpoint")
// at STEP (and, for checkpoints, before writing dataset INDEX; INDEX = number of
// datasets: after closing the file; +1: after the rename, before `latest`).
// Lets tests check that a dead rank ends the job and that a kill while writing
// never damages the previous checkpoint.
void debug_kill_point(const char* where, int64_t step, int64_t index = 0);

// Builds a message from stream pieces: throw UserError(msg("bad value ", x)).
template <typename... A>
std::string msg(const A&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

}  // namespace glam

#define GLAM_REQUIRE(cond, ...) \
  do { if (!(cond)) throw ::glam::UserError(::glam::msg(__VA_ARGS__)); } while (0)

#define GLAM_ASSERT(cond) \
  do { if (!(cond)) ::glam::fatal("internal check failed: " #cond, __FILE__, __LINE__); } while (0)

#define GLAM_CHECK_MPI(call)                                                   \
  do {                                                                         \
    int glam_rc_ = (call);                                                     \
    if (glam_rc_ != MPI_SUCCESS) ::glam::fatal_mpi(glam_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// HDF5 calls return a negative value on failure.
#define GLAM_CHECK_H5(call)                                                    \
  ([&]() {                                                                     \
    auto glam_rc_ = (call);                                                    \
    if (glam_rc_ < 0) ::glam::fatal("HDF5 call failed: " #call, __FILE__, __LINE__); \
    return glam_rc_;                                                           \
  }())
